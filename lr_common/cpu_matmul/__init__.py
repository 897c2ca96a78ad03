"""bfloat16 matrix products on the CPU's bf16 instructions through oneDNN (optional).

Build once with `python -m lr_common.cpu_matmul.build` (needs g++ and oneDNN, e.g.
`apt-get install libdnnl-dev`); without the build everything runs on XLA.
"""
from lr_common.cpu_matmul.matmul import (MODES, CpuMatmulError, DotGeneral, bf16_dot,
                                         dot_general_for, status, uses_onednn)

__all__ = ["MODES", "CpuMatmulError", "DotGeneral", "bf16_dot", "dot_general_for", "status",
           "uses_onednn"]
