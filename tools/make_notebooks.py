"""Builds colabs/edit.ipynb and colabs/train.ipynb (outputs cleared) with nbformat.

The install cell runs before lr_jax is installed, so it holds copies (without docstrings)
of the standard-library-only functions `lr_jax.notebook.BOOTSTRAP_FUNCTIONS`, read from
lr_jax/notebook.py here; tests/test_notebooks.py checks that the copies match.
"""
import ast
import json
import pathlib
import sys

import nbformat
from nbformat import v4

SOURCE_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SOURCE_ROOT))
from lr_jax import editors  # pylint: disable=wrong-import-position
ROOT = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE_ROOT
BOOTSTRAP_FUNCTIONS = ("github_repo", "detect_runtime", "install")  # = notebook.BOOTSTRAP_FUNCTIONS


def bootstrap_source(names=BOOTSTRAP_FUNCTIONS,
                     path=SOURCE_ROOT / "lr_jax" / "notebook.py") -> str:
  """The source of lr_jax/notebook.py's functions `names`, without their docstrings."""
  text = path.read_text()
  lines = text.splitlines()
  functions = {node.name: node for node in ast.parse(text).body
               if isinstance(node, ast.FunctionDef)}
  parts = []
  for name in names:
    node = functions[name]
    doc = node.body[0]
    if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
            and isinstance(doc.value.value, str)):
      raise ValueError(f"lr_jax/notebook.py: {name} has no docstring")
    parts.append("\n".join(lines[node.lineno - 1:doc.lineno - 1] + lines[doc.end_lineno:node.end_lineno]))
  return "\n\n\n".join(parts)


SETTINGS = '''import os
TINY = False  #@param {type:"boolean"}
TINY = TINY or os.environ.get("LR_JAX_TINY") == "1"  # the CI test runs the offline tiny path
# The generator: MaskGIT (ImageNet classes: the prompt becomes the nearest class),
# aMUSEd or Stable Diffusion inpainting (free text, through their own CLIP text encoders).
EDITOR = "maskgit"  #@param EDITOR_CHOICES
EDITOR = os.environ.get("LR_JAX_EDITOR", EDITOR)
# The lr_jax git repository. Left as this placeholder: the GitHub repository (and branch)
# Colab opened this notebook from.
REPO_URL = "https://github.com/OWNER/lr_jax"  #@param {type:"string"}
REPO_DIR = "lr_jax_repo"  # where the repository is cloned (its configs/ folder is used)
JAX_EXTRA = "auto"  #@param ["auto", "", "cuda", "tpu"]'''

# The editors of the registry (lr_jax/editors/), as Colab's form list.
SETTINGS = SETTINGS.replace("EDITOR_CHOICES", json.dumps(editors.available()))

SETTINGS_MD = '''**Settings.** `TINY` selects `configs/tiny.py` (`configs/amused_tiny.py` for aMUSEd):
small random models, no network and no weights (for a quick check that everything runs; its
edits are noise). Leave it off for the real models. `EDITOR` picks the generator that edits
the boxes: `maskgit` (the paper's; class-conditional, so the prompt is mapped to the nearest
ImageNet class) or `amused` (aMUSEd-256, conditioned on the prompt's text as it is). `REPO_URL`: the project's git repository. Opened in Colab from GitHub
(`colab.research.google.com/github/OWNER/REPO/blob/BRANCH/colabs/...`), the placeholder needs
no edit: the install cell clones that repository and branch. Opened any other way (Drive, an
upload), set it here. `JAX_EXTRA`: `auto` picks `cuda` on a GPU runtime, `tpu` on a TPU
runtime and none on the CPU; `""` installs no JAX extra.'''

INSTALL_MD = '''## 1. Install

Clones the repository and installs it with pip (the same as
`pip install "lr_jax[JAX_EXTRA] @ git+REPO_URL"`, but the clone also brings the `configs/`
folder that `nb.setup` loads by path). Skipped when `lr_jax` is already importable.
With REPO_URL still the placeholder, the repository is read from where Colab opened this
notebook; when that is not GitHub, the cell stops with a one-line error saying to set
REPO_URL. The code is a copy of `lr_jax.notebook.install` (standard library only: lr_jax
is not installed yet); *Show code* displays it.

**Colab's JAX is kept when it fits.** pip leaves installed packages alone when they already
satisfy the requirements, so a preinstalled JAX that is new enough stays as it is, together
with its GPU or TPU plugin. Only when JAX must be upgraded does the extra matter: `cuda` /
`tpu` upgrades the accelerator plugin in step (without it, pip would upgrade JAX alone and
JAX would fall back to the CPU). If pip upgraded JAX or NumPy, restart the session
(*Runtime → Restart session*) and run from the top again.'''

INSTALL = ('''#@title Install lr_jax (clone and pip install) {display-mode: "form"}
# Standard library only (lr_jax is not installed yet): copies of lr_jax/notebook.py's
# functions of the same names, written by tools/make_notebooks.py.
import importlib.util


''' + bootstrap_source() + '''


if importlib.util.find_spec("lr_jax") is None:  # not installed yet: clone, then install
  install(REPO_URL, JAX_EXTRA, REPO_DIR)''')

DEVICES_MD = '''## 2. Devices and config

`jax.devices()` lists the accelerators (TPU cores on a TPU runtime, the GPU on a GPU runtime,
else the CPU). `nb.check_accelerator()` stops with the fix when the runtime has a GPU or TPU
that JAX does not use (a JAX without the matching plugin silently runs on the CPU).
`nb.setup` loads the editor's config from the clone: `configs/maskgit_imagenet256.py` or
`configs/amused.py` (tiny: `configs/tiny.py`, `configs/amused_tiny.py`).'''

DEVICES = '''import jax
from lr_jax import notebook as nb
print(jax.devices())
nb.check_accelerator()
config = nb.setup(TINY, repo_dir=REPO_DIR, editor=EDITOR)'''

WEIGHTS_MD = '''## 3. Pretrained weights

Downloads, once and with progress bars, the editor's weights (MaskGIT: the official
ImageNet-256 tokenizer and transformer from Google Cloud Storage; aMUSEd: the
`amused/amused-256` VQ model, transformer, CLIP-L text encoder and tokenizer from the Hugging
Face hub, openrail++ licence) and DINO and CLIP (Hugging Face hub); later runs read the
caches. Then all frozen models are loaded (random tiny ones in tiny mode).'''
# (edit.ipynb loads them through `api.load` in the next section.)

WEIGHTS = '''weights = nb.download_weights(config)'''

BUILD = '''from lr_jax.models import build_models
built = build_models(config)  # the models, their frozen weights and the CLIP text encoder'''


def code(src):
  return v4.new_code_cell(src)


def md(src):
  return v4.new_markdown_cell(src)


def common(title_md, with_build=True):
  return [md(title_md), md(SETTINGS_MD), code(SETTINGS), md(INSTALL_MD), code(INSTALL),
          md(DEVICES_MD), code(DEVICES), md(WEIGHTS_MD), code(WEIGHTS)] + (
              [code(BUILD)] if with_build else [])


EDIT = common('''# Text-driven image editing with learnable regions (lr_jax): edit

Edits a photo from a text prompt alone, without a mask: boxes are proposed around *K* anchor
points (DINO's attention), the editor regenerates each box (MaskGIT: as the ImageNet class the
prompt names; aMUSEd: from the prompt's text), and CLIP scores pick the best candidate
(Lin et al., CVPR 2024). Runs on a GPU or TPU runtime (*Runtime → Change runtime type*).''',
                with_build=False) + [
    md('''## 4. Load the editor once

`api.load` builds the models once (from the config loaded above); every `editor.edit`
reuses them and their compiled functions.'''),
    code('''from lr_jax import api
editor = api.load(config)'''),
    md('''## 5. Edit the sample cat

The sample is scikit-image's cat photo, with the paper's prompts "a lion" and "cat face".
Without a trained RGN (see `train.ipynb`) the default strategy is `search`: every proposal is
edited and scored, and the best kept. `result.save(folder)` writes the edited photo (the
input's size), a sheet and a JSON record; the names carry the strategy and the seed, so runs
with other settings sit side by side (`overwrite=True` replaces a run with the same ones).'''),
    code('''examples = nb.sample_examples("samples")
results = [editor.edit(ex.image_path, ex.prompt, source_prompt=ex.source_prompt, seed=0)
           for ex in examples]
for result in results:
  result.save("edits", overwrite=True)'''),
    md('''Each sheet shows the input, DINO's attention with the anchors, the proposals, the result,
and below the candidates with their scores (the best one highlighted). `result.candidates`
holds every candidate's score and box in the photo's pixels.'''),
    code('''for result in results:
  print(nb.summary(result.outcome))
  print([(c.index, round(c.score, 4), c.box_pixels) for c in result.candidates[:3]], "...")
  nb.show(result.outcome.files["sheet"], width=900)'''),
    md('''## 6. Your own image, prompt and box

Set the prompt and the seed. With MaskGIT an ImageNet class works best (it is
class-conditional: the prompt is mapped to the nearest class); with aMUSEd any text ("a cat
wearing sunglasses") conditions the edit as it is. `SOURCE_PROMPT` describes the input (empty:
CLIP guesses it). `BOX`: your own box `top,left,height,width` in the photo's pixels (empty:
the regions are chosen for you); `REFINE_STEPS` > 0 fits the RGN to the image first (the
paper's per-image mode).'''),
    code('''PROMPT = "a tiger"  #@param {type:"string"}
SOURCE_PROMPT = ""  #@param {type:"string"}
BOX = ""  #@param {type:"string"}
REFINE_STEPS = 0  #@param {type:"integer"}
SEED = 0  #@param {type:"integer"}'''),
    md('''In Colab, with `UPLOAD` on, the next cell asks for a picture to upload. Elsewhere (or with
`UPLOAD` off) it uses `IMAGE_PATH`.'''),
    code('''UPLOAD = True  #@param {type:"boolean"}
IMAGE_PATH = "samples/chelsea.png"  #@param {type:"string"}
image_path = nb.upload_image("uploads", fallback=IMAGE_PATH, ask=UPLOAD)
nb.show(image_path, width=320)'''),
    code('''custom = editor.edit(image_path, PROMPT, source_prompt=SOURCE_PROMPT or None,
                     box=BOX or None, refine_steps=REFINE_STEPS, seed=SEED)
files = custom.save("edits_custom", overwrite=True)
print(nb.summary(custom.outcome))
nb.show(files["sheet"], width=900)
nb.show(custom.image, width=480, title="edited, at the input's resolution:")'''),    code('''# 7. In the browser: the same loaded editor behind a page (lr_jax.app): upload or use the
# sample, edit, pick another candidate, move the box and re-edit it, download. Needs
# pip install "lr_jax[app]"; SHARE gives a public link (Colab cannot open localhost).
BROWSER = False  #@param {type:"boolean"}
SHARE = True  #@param {type:"boolean"}
if BROWSER:
  from lr_jax.app import page
  page.serve(page.build({config.editor.name: editor}), share=SHARE)'''),
]

TRAIN = common('''# Text-driven image editing with learnable regions (lr_jax): train the RGN

Trains the region generation network (RGN) on a few images with prompts, plots the losses,
restores the RGN from its checkpoint and edits with it (Lin et al., CVPR 2024). Runs on a GPU
or TPU runtime (*Runtime → Change runtime type*).''') + [
    md('''## 4. Training images

Three (image, prompt) pairs made from scikit-image's pictures: the cat as "a lion" and
"a tiger", the coffee cup as "a teapot". `write_training_set` writes the pictures and a
`manifest.json`; your own data is a manifest of the same form (JSON, JSON lines or CSV with
`image`, `prompt` and optional `source_prompt`, `class_id`).'''),
    code('''from lr_jax.files import manifest
manifest_path = nb.write_training_set("train_data")
examples = manifest.read_manifest(manifest_path)
print(manifest_path.read_text())'''),
    md('''## 5. Train

`trainer.train` writes `config.json`, `data.json` (the training examples it resumes on),
`metrics.jsonl`, `loss_curve.png` and orbax checkpoints (`checkpoints/<step>`) to `WORKDIR`
(on Colab, a Google Drive folder keeps them across sessions).
The tiny config keeps its own 2 epochs.'''),
    code('''from lr_jax import trainer
EPOCHS = 5  #@param {type:"integer"}
if not TINY:
  config.train.epochs = EPOCHS
WORKDIR = "runs/rgn_tiny" if TINY else "runs/rgn"
result = trainer.train(config, WORKDIR, built=built, examples=examples)
print(f"{len(result.metrics)} steps, last loss {result.metrics[-1]['loss']:.4f}")'''),
    md('''## 6. Loss curves

`result.metrics` holds one record per step (the total loss, its CLIP, directional and
structure terms, the gradient norm); `sheets.loss_curve` plots each term.'''),
    code('''from lr_jax.files import sheets
nb.show(sheets.loss_curve("loss_curve.png", result.metrics, title="RGN training"), width=900)'''),
    md('''## 7. Checkpoints: restore and resume

`checkpointing.load_rgn_params` restores the RGN from the workdir's newest checkpoint (or from one
`checkpoints/<step>` folder). Calling `trainer.train` again with the same config resumes from
the newest checkpoint; here the run is complete, so no step is left.'''),
    code('''print("checkpoints:", sorted(p.name for p in (result.workdir / "checkpoints").iterdir()))
from lr_jax import checkpointing
rgn_params = checkpointing.load_rgn_params(WORKDIR, built.models, config)
print("largest |restored - trained| =", nb.max_param_difference(rgn_params, result.state.params))'''),
    code('''resumed = trainer.train(config, WORKDIR, built=built, examples=examples)
print(f"resumed at step {resumed.metrics[-1]['step']}: nothing left to train")'''),
    md('''## 8. Edit with the trained RGN

`run_edit` with `rgn_checkpoint=WORKDIR` loads the trained RGN; each record names the
checkpoint it came from.'''),
    code('''from lr_jax import inference
outcomes = inference.run_edit(config, examples, out_dir="edits_trained",
                              rgn_checkpoint=WORKDIR, built=built, seed=0)
nb.show_outcomes(outcomes)'''),
]


def write(name, cells):
  notebook = v4.new_notebook(cells=cells, metadata={
      "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
      "language_info": {"name": "python"},
      "accelerator": "GPU",
      "colab": {"provenance": [], "toc_visible": True},
  })
  for cell in notebook.cells:  # stable ids keep diffs small
    cell.id = f"{name}-{notebook.cells.index(cell):02d}"
  nbformat.validate(notebook)
  path = ROOT / "colabs" / f"{name}.ipynb"
  path.parent.mkdir(exist_ok=True)
  nbformat.write(notebook, str(path))
  print(path)


write("edit", EDIT)
write("train", TRAIN)
