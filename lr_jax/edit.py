r"""Edits images with a text prompt, no mask needed.

  python -m lr_jax.edit --config configs/maskgit_imagenet256.py \
      --image cat.png --prompt "a lion" --out results/

`--image` takes a file or a folder; `--manifest` a JSON/CSV list of (image, prompt).
How the regions are chosen (the first line printed says which, and why):
`--strategy search` (the default without a trained RGN) edits and scores every
proposal; `--rgn_checkpoint DIR` uses a trained RGN; `--refine_steps N` fits the RGN to
each image first (the paper's per-image mode); `--box top,left,height,width` (repeat
for several; photo pixels, or `--box_unit tokens`) edits your own boxes, no region
selection. Files are named <index>_<image>_<prompt>_<strategy>_seed<seed>_*.

On several processes (a TPU pod slice: `LR_JAX_DISTRIBUTED=1`; elsewhere
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) run the same command on each:
each process edits its block of the images into `--out` (files named as above, so one
folder all hosts see or one per host both work) and process 0 prints every result.
"""
from absl import app
from absl import flags

from lr_jax.files import config_files
from lr_jax import editors
from lr_jax import errors
from lr_jax.files import manifest as manifest_lib

_CONFIG = config_files.define_config_flag(editors.DEFAULT_CONFIG)
_IMAGE = flags.DEFINE_string("image", None, "An image file or a folder of images.")
_PROMPT = flags.DEFINE_string("prompt", None, "What to turn the image into, e.g. 'a lion'.")
_SOURCE = flags.DEFINE_string("source_prompt", None, "What the image shows (else CLIP guesses).")
_CLASS_ID = flags.DEFINE_integer("class_id", None, "ImageNet class id; overrides the prompt match.")
_MANIFEST = flags.DEFINE_string(
    "manifest", None, "A JSON list, JSON lines or CSV file of image, prompt[, source_prompt]"
    "[, class_id] rows; image paths relative to the manifest.")
_OUT = flags.DEFINE_string("out", "lr_jax_out", "Output folder (created if needed).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace results already in --out "
                               "(else an edit that would replace one is refused).")
_CKPT = flags.DEFINE_string("rgn_checkpoint", None, "Training workdir or checkpoints/<step>.")
_REFINE = flags.DEFINE_integer("refine_steps", None, "Per-image RGN steps before editing "
                               "(default: config.infer.refine_steps).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the edits.")
_STRATEGY = flags.DEFINE_string(
    "strategy", None, "How the regions are chosen: rgn (the trained RGN, --rgn_checkpoint), "
    "refine (the RGN fitted to each image, --refine_steps), search (every proposal edited and "
    "scored: K x M edits, no training), random / dino_random (the paper's baselines). "
    "Default: box with --box, refine with --refine_steps, rgn with --rgn_checkpoint, "
    "else search.")
_BOX = flags.DEFINE_multi_string(
    "box", None, "Your own box top,left,height,width (repeat for several: each is a "
    "candidate, scored, the best kept); skips region selection (no DINO, no RGN).")
_BOX_UNIT = flags.DEFINE_enum("box_unit", "pixels", ["pixels", "tokens"],
                              "Unit of --box: the photo's pixels, or cells of the box grid on "
                              "the editor's canvas (a record's boxes_tlhw_tokens).")


def _examples() -> list[manifest_lib.Example]:
  if _MANIFEST.value:
    return manifest_lib.read_manifest(_MANIFEST.value)
  if not _IMAGE.value or _PROMPT.value is None:
    raise errors.UsageError("give --image and --prompt, or --manifest")
  return manifest_lib.examples_from_path(_IMAGE.value, _PROMPT.value, _SOURCE.value,
                                         _CLASS_ID.value)


def main(argv):
  config = _CONFIG.value
  with errors.cli(argv):
    if _REFINE.value is not None and _REFINE.value < 0:
      raise errors.UsageError(f"--refine_steps must be >= 0, got {_REFINE.value}")
    from lr_jax import hosts  # pylint: disable=g-import-not-at-top
    from lr_jax import inference  # pylint: disable=g-import-not-at-top
    from lr_jax import user_boxes  # pylint: disable=g-import-not-at-top
    boxes = [user_boxes.parse(b) for b in _BOX.value] if _BOX.value else None
    refine_steps = config.infer.refine_steps if _REFINE.value is None else _REFINE.value
    strategy, reason = inference.choose_strategy(   # fails before anything loads
        _STRATEGY.value, _CKPT.value, refine_steps, boxes is not None)
    share = hosts.join()   # one process, or this one's place in a multi-process job
    examples = hosts.on_every_process(share, _examples)
    print(f"strategy: {strategy} ({reason})", flush=True)
    outcomes = inference.run_edit(
        config, examples, out_dir=_OUT.value, rgn_checkpoint=_CKPT.value,
        refine_steps=refine_steps, seed=_SEED.value, overwrite=_OVERWRITE.value,
        strategy=_STRATEGY.value, boxes=boxes, box_unit=_BOX_UNIT.value, share=share)
  lines = []
  for o in outcomes:
    best = o.record["best_candidate"]
    lines.append(f"{o.example.image_path}: {o.record['conditioning']}, best candidate {best}, "
                 f"S={o.record['scores']['S'][best]:.4f} -> {o.files.get('edited')}")
  everyone = "\n".join(t for t in hosts.all_texts("\n".join(lines), share) if t)
  if share.main:   # all_texts waited for every process
    if everyone:
      print(everyone)
  else:
    print(f"edit: {share}: {len(outcomes)} images done; process 0 prints every result")


if __name__ == "__main__":
  app.run(main, flags_parser=errors.parse_flags)
