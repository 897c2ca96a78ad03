r"""Measures edits: every region strategy on every image of a manifest, with a report.

  python -m lr_jax.evaluate --config configs/maskgit_imagenet256.py \
      --manifest images/manifest.json --strategies search,dino_random,random --out eval/

Per (image, strategy) one JSON line in `eval/results.jsonl` (CLIP text / image /
directional similarity, the quality score S, PSNR / SSIM / MSE outside the editor's
box, DINO structure distance, share of pixels changed, seconds; with an object mask
per image (manifest column `mask`, or PIE-Bench's `mapping_file.json` as the
manifest) also how the chosen box and anchors sit on it), the edits under
`eval/edits/<strategy>/`, and `summary.md`, `summary.csv`, `summary.png` and
`sheets/` (`lr_jax.evaluation.report`). Rerunning the command skips the pairs already done.

On several processes (a TPU pod slice: `LR_JAX_DISTRIBUTED=1`; elsewhere
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) run the same command on each,
with `--out` on a file system they all see: each process edits its share of the pairs,
process 0 merges them into `results.jsonl` and writes the report
(`lr_jax.evaluation.multihost`).
"""
from absl import app
from absl import flags

from lr_jax.files import config_files
from lr_jax import editors
from lr_jax import errors

_CONFIG = config_files.define_config_flag(editors.DEFAULT_CONFIG)
_MANIFEST = flags.DEFINE_string(
    "manifest", None, "JSON / JSON lines / CSV rows of image, prompt[, source_prompt]"
    "[, class_id][, mask], or PIE-Bench's mapping_file.json.")
_STRATEGIES = flags.DEFINE_list(
    "strategies", None, "Comma-separated region strategies (rgn, refine, search, random, "
    "dino_random). Default: rgn,search,dino_random,random with --rgn_checkpoint, else "
    "search,dino_random,random.")
_OUT = flags.DEFINE_string("out", None, "Evaluation folder (created; a rerun resumes it).")
_CKPT = flags.DEFINE_string("rgn_checkpoint", None, "Training workdir (strategies rgn, refine).")
_REFINE = flags.DEFINE_integer("refine_steps", 0, "Per-image RGN steps (strategy refine).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the edits.")
_WAIT = flags.DEFINE_float(
    "wait_for_shares", 3600.0, "Several processes: how long process 0 waits, in seconds, for "
    "the next pair of the others before it stops (their finished pairs are kept).")


def default_strategies(rgn_checkpoint: str | None) -> list[str]:
  from lr_jax.evaluation import runner as evaluation  # pylint: disable=g-import-not-at-top
  return [s for s in evaluation.DEFAULT_STRATEGIES if rgn_checkpoint or s != "rgn"]


def main(argv):
  with errors.cli(argv):
    if not _MANIFEST.value or not _OUT.value:
      raise errors.UsageError("give --manifest FILE and --out DIR")
    if not _WAIT.value > 0:
      raise errors.UsageError(f"--wait_for_shares must be > 0 seconds, got {_WAIT.value}")
    from lr_jax import hosts  # pylint: disable=g-import-not-at-top
    from lr_jax.evaluation import multihost  # pylint: disable=g-import-not-at-top
    from lr_jax.files import manifest as manifest_lib  # pylint: disable=g-import-not-at-top
    strategies = (_STRATEGIES.value if _STRATEGIES.present   # `--strategies=`: none, an error
                  else default_strategies(_CKPT.value))
    share = hosts.join()   # one process, or this one's place in a multi-process job
    examples = hosts.on_every_process(share, manifest_lib.read_manifest, _MANIFEST.value)
    _, files = multihost.evaluate_and_report(
        _CONFIG.value, examples, strategies, _OUT.value, rgn_checkpoint=_CKPT.value,
        refine_steps=_REFINE.value, seed=_SEED.value, share=share, wait_s=_WAIT.value)
  if not files:   # another process of the job reports
    return
  print(files["markdown"].read_text())
  print(f"report: {files['markdown']}, {files['csv']}, {files['chart']}; sheets in "
        f"{files['markdown'].parent / 'sheets'}")


if __name__ == "__main__":
  app.run(main, flags_parser=errors.parse_flags)
