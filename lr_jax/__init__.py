"""lr_jax: text-driven image editing via learnable regions (Lin et al., CVPR 2024) in JAX."""
import os

# transformers (used here only for CLIP's tokenizer) announces on import that PyTorch is
# absent; lr_jax never needs PyTorch, so that advice is noise on every run.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
