"""The Stable Diffusion editor (lr_jax/editors/stable_diffusion.py) with the tiny random SD.

tests/test_editors.py checks the editor contract for it; here what is SD's own: the box grid
against the latent grid (a box cell is 2 x 2 latents), pixels beyond the feathered edge, a
box alone as in a batch, the prompt template and its record, config checks, the offline
error, a local pipeline directory, and the commands end to end (train, edit --strategy
search, evaluate with strategies rgn, refine and search)."""
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import stable_diffusion as sd_config
from configs import stable_diffusion_tiny
from lr_common.errors import SettingsError
from lr_jax import editors
from lr_jax import run_settings
from lr_jax.editors import stable_diffusion as sd
from lr_jax.encoders.hf_files import WeightsError
from lr_jax.files import manifest as manifest_lib
from lr_jax.generators.stable_diffusion import hub
from lr_jax.generators.stable_diffusion import inpaint as inpaint_lib
from tests import cli_helpers


def tiny_config(**edit):
  c = stable_diffusion_tiny.get_config()
  for key, value in edit.items():
    c.editor[key] = value
  return c


@pytest.fixture(scope="module")
def tiny():
  return sd.build(tiny_config(), "tiny", jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def edit_fn(tiny):
  return jax.jit(tiny[0].edit)


def inputs(editor, boxes, batch, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.random((batch, editor.image_size, editor.image_size, 3)).astype(np.float32)
  cond = jax.tree.map(jnp.asarray, editor.dummy_condition(batch, seed))
  return jnp.asarray(images), jnp.asarray(boxes, jnp.int32), cond


def test_grids_sizes_and_full_size_facts():
  editor = sd.make(tiny_config())
  assert (editor.image_size, editor.latents_per_side, editor.box_grid) == (64, 16, 8)
  assert editor.settings.inpaint.scheduler.kind == "dpmsolver++"
  assert editor.settings.inpaint.num_steps == 3
  for arg, repo, kind, width in (("", "stable-diffusion-v1-5/stable-diffusion-inpainting",
                                  "ddim", 768),
                                 ("2", "stabilityai/stable-diffusion-2-inpainting", "pndm", 1024)):
    config = sd_config.get_config(arg)
    full = sd.make(config)
    assert (full.image_size, full.latents_per_side, full.box_grid) == (512, 64, 32)
    assert full.models.unet.cross_attention_dim == full.models.text.text.hidden_size == width
    record = full.record()
    assert record["stable_diffusion"] == repo and record["stable_diffusion_scheduler"] == kind
    assert record["stable_diffusion_steps"] == 50
    assert record["stable_diffusion_guidance_scale"] == 7.5
    assert full.settings.prompt_template == "a high quality image of {prompt}."
    assert max(config.region.sizes) <= full.box_grid and config.region.num_anchors == 4
    run_settings.parse(config)   # the region sizes fit the 32-grid
  run_settings.parse(tiny_config())
  with pytest.raises(ValueError, match="1.5"):
    sd_config.get_config("3")
  # The scheduler setting swaps the repo's sampler, "" keeps it.
  assert sd.make(sd_config.get_config("2")).settings.inpaint.scheduler.kind == "pndm"
  config = sd_config.get_config("2")
  config.editor.scheduler = "dpmsolver++"
  assert sd.make(config).settings.inpaint.scheduler.kind == "dpmsolver++"
  assert editors.configs("stable_diffusion") == ("stable_diffusion", "stable_diffusion_tiny")


@pytest.mark.parametrize("key, value, needle", [
    ("model", "3", "editor.model must be one of ('1.5', '2')"),
    ("variant", "bf16", "editor.variant"),
    ("cache_dir", None, "editor.cache_dir"),
    ("scheduler", "euler", "editor.scheduler"),
    ("num_steps", 0, "editor.num_steps must be an integer in [1, 999]"),
    ("num_steps", 1000, "editor.num_steps"),
    ("guidance_scale", -1.0, "editor.guidance_scale"),
    ("guidance_scale", float("nan"), "editor.guidance_scale"),
    ("negative_prompt", None, "editor.negative_prompt"),
    ("prompt_template", "a photo", "editor.prompt_template must be a string with {prompt}"),
    ("prompt_template", "{prompt} and {prompt}", "editor.prompt_template"),
    ("grow_tokens", -1, "editor.grow_tokens"),
    ("grow_tokens", True, "editor.grow_tokens"),
    ("feather_radius", float("inf"), "editor.feather_radius"),
    ("dtype", "float16", "editor.dtype"),
    ("chunk_size", -1, "editor.chunk_size"),
    ("resolution", 500, "editor.resolution must be a multiple of 16"),
])
def test_bad_config_values_are_one_clear_error_before_loading(key, value, needle):
  for config in (tiny_config(), sd_config.get_config()):
    config.editor[key] = value
    with pytest.raises(SettingsError, match=_escape(needle)):
      sd.make(config)
    with pytest.raises(SettingsError, match=_escape(needle)):   # not a WeightsError
      sd.build(config, "official", None)


def _escape(text):
  return "".join("\\" + ch if ch in "[](){}.?*+^$|" else ch for ch in text)


def test_every_bad_value_is_named_in_the_one_error():
  config = sd_config.get_config()
  config.editor.num_steps, config.editor.dtype, config.editor.model = 0, "half", "xl"
  with pytest.raises(SettingsError) as error:
    sd.make(config)
  for key in ("editor.num_steps", "editor.dtype", "editor.model"):
    assert key in str(error.value)


def test_condition_sends_the_templated_prompt_and_records_it(tiny, tmp_path):
  editor, _ = tiny
  long = "a cat wearing sunglasses " * 4   # > 77 byte tokens
  examples = [manifest_lib.Example(tmp_path / "a.png", "a cat wearing sunglasses"),
              manifest_lib.Example(tmp_path / "b.png", long, class_id=3)]
  cond = editor.condition(examples, text_encoder=None)
  sent = "a high quality image of a cat wearing sunglasses."
  first = cond.records[0]["text_condition"]
  assert first == {"prompt": "a cat wearing sunglasses", "prompt_as_sent": sent,
                   "negative_prompt": "", "guidance_scale": 7.5, "truncated_to_tokens": None}
  assert cond.records[1]["text_condition"]["truncated_to_tokens"] == 77
  assert cond.summaries[0] == f"prompt {sent!r}" and "truncated" in cond.summaries[1]
  json.dumps(cond.records)
  tok = editor.tokenizer
  want = tok([sent], padding="max_length", max_length=77, truncation=True)["input_ids"][0]
  np.testing.assert_array_equal(cond.arrays["prompt_ids"][0], want)
  np.testing.assert_array_equal(cond.arrays["negative_ids"][0],
                                tok([""], padding="max_length", max_length=77)["input_ids"][0])
  plain, _ = sd.build(tiny_config(prompt_template="{prompt}", negative_prompt="blurry"), "tiny",
                      jax.random.PRNGKey(0))
  record = plain.condition(examples[:1], None).records[0]["text_condition"]
  assert record["prompt_as_sent"] == "a cat wearing sunglasses"
  assert record["negative_prompt"] == "blurry"
  with pytest.raises(sd.PromptError, match="needs a text prompt"):
    editor.condition([manifest_lib.Example(tmp_path / "c.png", " ", class_id=3)], None)
  with pytest.raises(ValueError, match="no tokenizer"):
    sd.make(tiny_config()).condition(examples, None)


def test_a_box_cell_is_two_by_two_latent_cells(tiny):
  editor, params = tiny
  exact = sd.make(tiny_config(grow_tokens=0))
  boxes = jnp.asarray([[[3, 5, 1, 1], [0, 0, 2, 3]]], jnp.int32)
  cells, masks = exact.region_masks(boxes)
  assert cells.shape == (1, 2, 8, 8) and masks.shape == (1, 2, 64, 64)
  # One box cell: 8 x 8 pixels (64 px / 8 cells) ...
  want = np.zeros((64, 64), np.float32)
  want[24:32, 40:48] = 1
  np.testing.assert_array_equal(masks[0, 0], want)
  # ... which the pipeline turns into 2 x 2 of its 16 x 16 latent cells.
  images = jnp.zeros((2, 64, 64, 3), jnp.float32)
  conditioning = jax.jit(inpaint_lib.mask_conditioning, static_argnums=1)
  latent_mask, _ = conditioning(params["vae"], editor.models.vae, images, masks[0],
                                jnp.zeros((2, 16, 16, 4)))
  latent = np.asarray(latent_mask)[..., 0]
  want = np.zeros((16, 16))
  want[6:8, 10:12] = 1
  np.testing.assert_array_equal(latent[0], want)
  assert latent[1].sum() == (2 * 2) * (3 * 2) and latent[1][:4, :6].all()
  # Grown by one cell (the default), clamped to the grid.
  cells, _ = editor.region_masks(boxes)
  assert np.asarray(cells)[0, 0].sum() == 9 and np.asarray(cells)[0, 1].sum() == 3 * 4


BOX = [2, 3, 2, 1]


def test_pixels_beyond_the_feather_are_the_input_byte_for_byte(tiny, edit_fn):
  editor, params = tiny
  images, boxes, cond = inputs(editor, [[BOX]], batch=1)
  out = edit_fn(params, images, boxes, cond, jax.random.PRNGKey(5))
  # Grown box: cells 1..4 x 2..4, pixels 8..40 x 16..40; feather sigma 64 // 16 - 1 = 3 px,
  # cut at 3 sigma = 9 px.
  np.testing.assert_array_equal(np.asarray(out.masked_boxes), [[[1, 2, 4, 3]]])
  mask = np.asarray(out.pixel_mask)[0, 0, ..., 0]
  inside = np.zeros((64, 64), bool)
  inside[:40 + 9, 16 - 9:40 + 9] = True
  assert (mask[~inside] == 0).all() and (mask[16:32, 24:32] > 0.99).all()
  edited = np.asarray(out.images)[0, 0]
  source = np.asarray(images)[0]
  assert edited.tobytes() != source.tobytes()
  np.testing.assert_array_equal(edited[mask == 0], source[mask == 0])   # exact float32 bits
  assert np.abs(edited[16:32, 24:32] - source[16:32, 24:32]).max() > 0.05


def test_a_box_alone_edits_as_in_the_batch(tiny, edit_fn):
  editor, params = tiny
  rng = jax.random.PRNGKey(5)
  alone_images, alone_boxes, alone_cond = inputs(editor, [[BOX]], batch=1)
  alone = edit_fn(params, alone_images, alone_boxes, alone_cond, rng)
  # The same image, box and prompt at (0, 0) of a 2 x 2 batch: its key is
  # fold_in(fold_in(rng, 0), 0) there too.
  other_images, _, other_cond = inputs(editor, [[BOX]], batch=2, seed=1)
  images = other_images.at[0].set(alone_images[0])
  cond = jax.tree.map(lambda o, a: o.at[0].set(a[0]), other_cond, alone_cond)
  boxes = jnp.asarray([[BOX, [0, 0, 3, 3]], [[4, 4, 4, 4], BOX]], jnp.int32)
  batch = edit_fn(params, images, boxes, cond, rng)
  np.testing.assert_allclose(batch.images[0, 0], alone.images[0, 0], rtol=0, atol=1e-5)
  # The same box on another image, or at another place, samples other noise.
  assert np.abs(np.asarray(batch.images[1, 1]) - np.asarray(batch.images[0, 0])).max() > 1e-2


def test_bfloat16_casts_the_unet_and_text_encoder_once():
  editor, params = sd.build(tiny_config(dtype="bfloat16"), "tiny", jax.random.PRNGKey(0))
  assert editor.dtype == "bfloat16" and editor.settings.inpaint.dtype == "bfloat16"
  leaves = lambda tree: [x for x in jax.tree.leaves(tree) if x.ndim >= 2]
  assert {x.dtype for x in leaves(params["unet"])} == {np.dtype(jnp.bfloat16)}
  assert {x.dtype for x in leaves(params["text_encoder"])} == {np.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(params["vae"])} == {np.dtype(np.float32)}


def test_offline_official_build_lists_the_files_and_the_download_command(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  for arg, variant, repo in (("1.5", "", "stable-diffusion-v1-5/stable-diffusion-inpainting"),
                             ("2", "fp16", "stabilityai/stable-diffusion-2-inpainting")):
    config = sd_config.get_config(arg)
    config.editor.cache_dir, config.editor.variant = str(tmp_path), variant
    start = time.time()
    with pytest.raises(WeightsError) as error:
      sd.build(config, "official", None)
    assert time.time() - start < 30
    message = str(error.value)
    suffix = ".fp16" if variant else ""
    for name in ("unet/config.json", f"unet/diffusion_pytorch_model{suffix}.safetensors",
                 f"vae/diffusion_pytorch_model{suffix}.safetensors",
                 f"text_encoder/model{suffix}.safetensors", "tokenizer/",
                 "scheduler/scheduler_config.json"):
      assert name in message, (name, message)
    assert f"hf download {repo} " in message and "HF_HUB_OFFLINE" in message


def test_local_hub_directory_loads_and_tokenizes_as_the_diffusers_pipeline(fixtures_dir):
  """The tiny fixture pipeline (hub layout, written by tools/sd_fixtures_pipeline.py) as
  "official" weights: its own scheduler, tokenizer files and text encoder."""
  sd_dir = fixtures_dir / "stable_diffusion"
  io = np.load(sd_dir / "pipeline_tiny_io.npz")
  config = sd_config.get_config()
  config.editor.repo, config.editor.resolution = str(sd_dir / "pipeline_tiny"), 64
  config.editor.prompt_template = "{prompt}"   # the fixture's prompts went in as they are
  editor, params = sd.build(config, "official", None)
  assert editor.models == hub.tiny_models()
  assert (editor.image_size, editor.latents_per_side, editor.box_grid) == (64, 16, 8)
  assert editor.record()["stable_diffusion"] == str(sd_dir / "pipeline_tiny")
  assert editor.settings.inpaint.scheduler.kind == "pndm"   # the repo's own
  ids, _ = editor.tokenize([str(p) for p in io["prompts"]])   # one of them is ""
  np.testing.assert_array_equal(ids, io["input_ids"])
  cond = editor.condition([manifest_lib.Example(sd_dir / "a.png", str(io["prompts"][0]))], None)
  np.testing.assert_array_equal(cond.arrays["prompt_ids"][0], io["input_ids"][0])
  hidden = inpaint_lib.encode_prompts(params, editor.models, ids)
  np.testing.assert_allclose(hidden, io["prompt_embeds"], rtol=0, atol=1e-5)
  config.editor.scheduler = "ddim"
  assert sd.make(config).settings.inpaint.scheduler.kind == "ddim"
  assert sd.weight_files(config) == {"stable_diffusion": sd_dir / "pipeline_tiny"}


def test_notebook_setup_picks_the_sd_configs(capsys):
  from lr_jax import notebook  # pylint: disable=g-import-not-at-top
  config = notebook.setup(True, editor="stable_diffusion")
  assert (config.editor.name, config.models) == ("stable_diffusion", "tiny")
  assert "config stable_diffusion_tiny: tiny random models" in capsys.readouterr().out
  config = notebook.setup(False, editor="stable_diffusion")
  assert (config.editor.name, config.editor.model, config.models) == (
      "stable_diffusion", "1.5", "official")


# -- the commands ------------------------------------------------------------------------

def test_commands_train_edit_search_and_evaluate(cli_env, tmp_path):
  from lr_jax import samples  # pylint: disable=g-import-not-at-top
  config = ["--config", "configs/stable_diffusion_tiny.py"]
  workdir = tmp_path / "wd"
  proc = cli_helpers.run(cli_env, "lr_jax.train", *config, "--workdir", str(workdir),
                         "--config.train.epochs=1", "--noprogress", timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "trained 2 steps" in proc.stdout
  samples.write_samples(tmp_path / "s")
  manifest = tmp_path / "one.json"   # one image: each strategy compiles its own program
  manifest.write_text(json.dumps([{"image": str(tmp_path / "s" / "chelsea.png"),
                                   "prompt": "a cat wearing sunglasses"}]))
  proc = cli_helpers.run(cli_env, "lr_jax.edit", *config,
                         "--image", str(tmp_path / "s" / "chelsea.png"),
                         "--prompt", "a cat wearing sunglasses", "--strategy", "search",
                         "--out", str(tmp_path / "out"), timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "prompt 'a high quality image of a cat wearing sunglasses.'" in proc.stdout
  [record] = list((tmp_path / "out").glob("*.json"))
  data = json.loads(record.read_text())
  assert data["editor"] == "stable_diffusion" and data["stable_diffusion"] == "tiny"
  assert data["text_condition"]["prompt_as_sent"] == (
      "a high quality image of a cat wearing sunglasses.")
  assert data["strategy"] == "search" and "class" not in data
  # Each strategy compiles its own program (10-20 s here; search's is the edit run's, from
  # the shared XLA cache). random and dino_random edit K boxes of random sizes in one call,
  # as rgn edits K boxes: left to the MaskGIT tests to keep this one short.
  strategies = "rgn,refine,search"
  proc = cli_helpers.run(cli_env, "lr_jax.evaluate", *config, "--manifest", str(manifest),
                         "--strategies", strategies, "--rgn_checkpoint", str(workdir),
                         "--refine_steps", "1", "--out", str(tmp_path / "eval"), timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = (tmp_path / "eval" / "results.jsonl").read_text().splitlines()
  rows = [json.loads(line) for line in results]
  assert {r["strategy"] for r in rows} == set(strategies.split(","))
  assert all(np.isfinite(r["metrics"]["quality_S"]) for r in rows)
