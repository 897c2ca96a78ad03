"""The aMUSEd editor (lr_jax/editors/amused.py) with the tiny random aMUSEd, offline.

tests/test_editors.py checks the editor contract for it; here: one key per box, known
tokens, pixels far from the box, bfloat16, the conditioning record, weights from a local
hub-layout directory (float32 and fp16 files), the offline error, config checks, and the
commands end to end."""
import dataclasses
import json
import pathlib
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from configs import amused as amused_config
from configs import amused_tiny
from lr_jax.encoders import hf_weights
from lr_jax.files import manifest as manifest_lib
from lr_jax import run_settings
from lr_jax.generators.amused import hub
from lr_jax.generators.amused import transformer as transformer_lib
from lr_jax.generators.amused import vq as vq_lib
from lr_jax.editors import amused
from lr_jax.encoders.hf_files import WeightsError
from lr_common.errors import SettingsError
from tests import cli_helpers

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "amused"


def tiny_config(**edit):
  c = amused_tiny.get_config()
  for key, value in edit.items():
    c.editor[key] = value
  return c


_JITTED = {}


def jitted(editor, method: str):
  """One jitted `editor.<method>` per (editor, method): tests with the same shapes share
  its compiled versions."""
  if (editor, method) not in _JITTED:
    _JITTED[editor, method] = jax.jit(getattr(editor, method))
  return _JITTED[editor, method]


@pytest.fixture(scope="module")
def tiny():
  return amused.build(tiny_config(), "tiny", jax.random.PRNGKey(0))


def inputs(editor, boxes, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.random((batch, editor.image_size, editor.image_size, 3)).astype(np.float32)
  cond = jax.tree.map(jnp.asarray, editor.dummy_condition(batch, seed))
  return jnp.asarray(images), jnp.asarray(boxes, jnp.int32), cond


BOXES = [[[1, 1, 2, 2], [4, 3, 3, 2], [0, 0, 8, 8]],
         [[6, 6, 2, 2], [2, 4, 3, 3], [5, 0, 1, 1]]]


def test_tiny_sizes_and_full_size_facts():
  editor = amused.make(tiny_config())
  assert (editor.image_size, editor.box_grid, editor.mask_token_id) == (64, 8, 39)
  assert editor.transformer.codebook_size == editor.vq.num_vq_embeddings == 32
  for arg, size, grid, repo in (("256", 256, 16, "amused/amused-256"),
                                ("512", 512, 32, "amused/amused-512")):
    full = amused.make(amused_config.get_config(arg))
    assert (full.image_size, full.box_grid, full.mask_token_id) == (size, grid, 8255)
    assert full.record()["amused"] == repo and full.transformer.downsample == (size == 512)
    run_settings.parse(amused_config.get_config(arg))   # the paper's region sizes fit
  run_settings.parse(tiny_config())
  with pytest.raises(ValueError, match="256 or 512"):
    amused_config.get_config("1024")


def test_condition_names_the_prompt_and_tokenizes_as_the_pipeline(tiny, tmp_path):
  editor, _ = tiny
  long = "a cat wearing sunglasses " * 4   # > 77 byte tokens
  examples = [manifest_lib.Example(tmp_path / "a.png", "a cat wearing sunglasses"),
              manifest_lib.Example(tmp_path / "b.png", long, class_id=3)]
  cond = editor.condition(examples, text_encoder=None)
  records, summaries = cond.records, cond.summaries
  assert records[0]["text_condition"]["prompt"] == "a cat wearing sunglasses"
  assert records[0]["text_condition"]["negative_prompt"] == ""
  assert records[0]["text_condition"]["truncated_to_tokens"] is None
  assert records[1]["text_condition"]["truncated_to_tokens"] == 77 and "truncated" in summaries[1]
  assert summaries[0] == "prompt 'a cat wearing sunglasses'"
  json.dumps(records)
  tok = editor.tokenizer
  want = tok(["a cat wearing sunglasses"], padding="max_length", max_length=77,
             truncation=True)["input_ids"][0]
  np.testing.assert_array_equal(cond.arrays["prompt_ids"][0], want)
  np.testing.assert_array_equal(cond.arrays["negative_ids"][0],
                                tok([""], padding="max_length", max_length=77)["input_ids"][0])
  assert cond.arrays["prompt_ids"].shape == (2, 77)
  with pytest.raises(amused.PromptError, match="needs a text prompt"):
    editor.condition([manifest_lib.Example(tmp_path / "c.png", "", class_id=3)], None)
  with pytest.raises(ValueError, match="no tokenizer"):
    amused.make(tiny_config()).condition(examples, None)


def test_a_box_alone_decodes_as_in_the_batch_and_known_tokens_stay(tiny):
  editor, params = tiny
  images, boxes, cond = inputs(editor, BOXES)
  rng = jax.random.PRNGKey(7)
  decode = jitted(editor, "decode_boxes")
  out = decode(params, images, boxes, cond, rng)
  tokens, ids, mask = (np.asarray(out[k]) for k in ("tokens", "ids", "token_mask"))
  # Known tokens never change; the boxes are regenerated.
  np.testing.assert_array_equal(np.where(mask, 0, tokens), np.where(mask, 0, ids[:, None]))
  assert (tokens != ids[:, None])[mask].mean() > 0.5
  assert mask[0, 0].sum() == 4 * 4   # grown by one token on each side
  # Box (0, 0) alone, with the same rng (its key fold_in(fold_in(rng, 0), 0)).
  alone = decode(params, images[:1], boxes[:1, :1], jax.tree.map(lambda x: x[:1], cond), rng)
  np.testing.assert_array_equal(np.asarray(alone["tokens"])[0, 0], tokens[0, 0])
  # Box (1, 1) among other boxes: still its own tokens.
  others = jnp.asarray(BOXES[::-1], jnp.int32).at[1, 1].set(boxes[1, 1])
  moved = decode(params, images, others, cond, rng)
  np.testing.assert_array_equal(np.asarray(moved["tokens"])[1, 1], tokens[1, 1])
  # Box (0, 1) moved to place (0, 0) gets another key, so other samples.
  alone = decode(params, images[:1], boxes[:1, 1:2], jax.tree.map(lambda x: x[:1], cond), rng)
  assert (np.asarray(alone["tokens"])[0, 0] != tokens[0, 1]).sum() > 0


def test_pixels_far_from_the_box_are_the_input(tiny):
  editor, params = tiny
  images, boxes, cond = inputs(editor, [[[0, 0, 2, 2]]], batch=1)
  out = jitted(editor, "edit")(params, images, boxes, cond, jax.random.PRNGKey(0))
  # Grown box: tokens 0..2 = pixels 0..23; feather sigma 64 // 16 - 1 = 3 px, cut at 9 px.
  far = np.ones((64, 64), bool)
  far[:33, :33] = False
  edited, mask = np.asarray(out.images)[0, 0], np.asarray(out.pixel_mask)[0, 0, ..., 0]
  assert (mask[far] == 0).all() and (mask[:8, :8] > 0.99).all()
  np.testing.assert_array_equal(edited[far], np.asarray(images)[0][far])
  assert np.abs(edited[:8, :8] - np.asarray(images)[0, :8, :8]).max() > 0.05
  np.testing.assert_array_equal(np.asarray(out.masked_boxes), [[[0, 0, 3, 3]]])


def test_bfloat16_runs_finite(tiny):
  editor, params = tiny
  bf_editor, bf_params = amused.build(tiny_config(dtype="bfloat16"), "tiny", jax.random.PRNGKey(0))
  assert bf_editor.dtype == "bfloat16"
  assert bf_params["transformer"]["embed"]["embeddings"]["embedding"].dtype == jnp.bfloat16
  assert bf_params["text_encoder"]["text_projection"]["kernel"].dtype == jnp.bfloat16
  assert bf_params["vq"]["quantize"]["embedding"]["embedding"].dtype == jnp.float32
  images, boxes, cond = inputs(editor, [[[0, 0, 2, 2]]], batch=1)
  rng = jax.random.PRNGKey(0)
  bf = jitted(bf_editor, "edit")(bf_params, images, boxes, cond, rng)
  f32 = jitted(editor, "edit")(params, images, boxes, cond, rng)
  pixels = np.asarray(bf.images)
  assert np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 1
  np.testing.assert_array_equal(bf.pixel_mask, f32.pixel_mask)
  far = np.asarray(bf.pixel_mask)[0, 0, ..., 0] == 0
  np.testing.assert_array_equal(pixels[0, 0][far], np.asarray(images)[0][far])
  print(f"bfloat16 vs float32, same key: max pixel difference in the box "
        f"{np.abs(pixels - np.asarray(f32.images)).max():.3f}")


def test_guidance_off_skips_the_negative_prompt(tiny):
  editor, params = tiny
  plain, _ = amused.build(tiny_config(guidance_scale=1.0), "tiny", jax.random.PRNGKey(0))
  images, boxes, cond = inputs(editor, BOXES)
  rng = jax.random.PRNGKey(2)
  guided = jitted(editor, "decode_boxes")(params, images, boxes, cond, rng)["tokens"]
  unguided = jitted(plain, "decode_boxes")(params, images, boxes, cond, rng)["tokens"]
  other_negative = dict(cond, negative_ids=cond["prompt_ids"])
  assert (np.asarray(jitted(plain, "decode_boxes")(params, images, boxes, other_negative, rng)
                     ["tokens"]) == np.asarray(unguided)).all()
  assert (np.asarray(guided) != np.asarray(unguided)).any()


@pytest.mark.parametrize("section, key, value, needle", [
    ("editor", "resolution", 300, "editor.resolution must be one of [256, 512]"),
    ("editor", "variant", "bf16", "editor.variant"),
    ("editor", "mask_token_id", 5, "editor.mask_token_id"),
    ("editor", "num_steps", 0, "editor.num_steps"),
    ("editor", "guidance_scale", -1.0, "editor.guidance_scale"),
    ("editor", "temperature", (1.0,), "editor.temperature"),
    ("editor", "schedule", "square", "editor.schedule"),
    ("editor", "grow_tokens", -1, "editor.grow_tokens"),
    ("editor", "dtype", "float16", "editor.dtype"),
])
def test_bad_config_values_are_one_clear_error(section, key, value, needle):
  for config in (tiny_config(), amused_config.get_config()):
    config[section][key] = value
    with pytest.raises(SettingsError, match=needle.replace("[", r"\[").replace("]", r"\]")):
      amused.make(config)


def test_offline_hub_repo_lists_the_files_and_the_download_command(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  for arg, variant, repo in (("256", "", "amused/amused-256"), ("512", "fp16", "amused/amused-512")):
    config = amused_config.get_config(arg)
    config.editor.cache_dir, config.editor.variant = str(tmp_path), variant
    start = time.time()
    with pytest.raises(WeightsError) as error:
      amused.build(config, "official", None)
    assert time.time() - start < 30
    message = str(error.value)
    suffix = ".fp16" if variant else ""
    for name in ("vqvae/config.json", f"vqvae/diffusion_pytorch_model{suffix}.safetensors",
                 f"transformer/diffusion_pytorch_model{suffix}.safetensors",
                 f"text_encoder/model{suffix}.safetensors", "tokenizer/"):
      assert name in message, (name, message)
    assert f"hf download {repo} vqvae/config.json" in message and "HF_HUB_OFFLINE" in message
    assert f"--local-dir {repo.split('/')[1]}" in message


# -- weights from a local directory in the hub layout --------------------------------------

_VQ_JSON = dict(_class_name="VQModel", act_fn="silu", block_out_channels=[8] * 5,
                down_block_types=["DownEncoderBlock2D"] * 5,
                up_block_types=["UpDecoderBlock2D"] * 5, in_channels=3, out_channels=3,
                latent_channels=4, layers_per_block=1, lookup_from_codebook=True,
                mid_block_add_attention=False, norm_num_groups=4, norm_type="group",
                num_vq_embeddings=32, vq_embed_dim=6)


def _random_tensors(shapes, seed):
  rng = np.random.default_rng(seed)
  return {k: (0.3 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}


def write_hub_directory(root: pathlib.Path, variant: str | None = None, codebook: int = 32):
  """A small aMUSEd in the hub layout: random VQ (16 px per token) and transformer files,
  the fixtures' tiny CLIP text encoder and tokenizer."""
  vq_config = hub.vq_config_from_json(_VQ_JSON)
  model = dataclasses.replace(transformer_lib.UVit2DConfig.tiny(), codebook_size=codebook,
                              vocab_size=codebook + 8)
  vq_tensors = _random_tensors(hf_weights.hf_shapes(vq_lib.abstract_params(vq_config),
                                                    hub.vq_param_name), 0)
  tr_tensors = _random_tensors(transformer_lib.expected_hf_shapes(model), 1)
  text_dir = FIXTURES / "text_tiny"
  text_tensors = load_file(str(text_dir / "text_encoder" / "model.safetensors"))
  cast = (lambda t: {k: v.astype(np.float16) for k, v in t.items()}) if variant else dict
  for sub, data, tensors in (
      ("vqvae", _VQ_JSON, vq_tensors),
      ("transformer", {"_class_name": "UVit2DModel", **dataclasses.asdict(model)}, tr_tensors),
      ("text_encoder", json.loads((text_dir / "text_encoder" / "config.json").read_text()),
       text_tensors)):
    (root / sub).mkdir(parents=True, exist_ok=True)
    (root / sub / "config.json").write_text(json.dumps(data))
    save_file(cast(tensors), str(root / sub / hub.weights_filename(sub, variant)))
  shutil.copytree(text_dir / "tokenizer", root / "tokenizer", dirs_exist_ok=True)
  return tr_tensors


def local_config(directory, variant=""):
  config = amused_config.get_config()
  config.editor.repo, config.editor.variant = str(directory), variant
  config.editor.num_steps = 2
  return config


@pytest.mark.parametrize("variant", ["", "fp16"])
def test_local_directory_loads_strictly_and_edits(tmp_path, variant):
  tr_tensors = write_hub_directory(tmp_path, variant or None)
  editor, params = amused.build(local_config(tmp_path, variant), "official", None)
  assert (editor.image_size, editor.box_grid, editor.mask_token_id) == (256, 16, 39)
  assert editor.record()["amused"] == str(tmp_path)
  loaded = np.asarray(params["transformer"]["embed"]["embeddings"]["embedding"])
  want = tr_tensors["embed.embeddings.weight"]
  np.testing.assert_allclose(loaded, want.astype(np.float16) if variant else want, rtol=0, atol=0)
  assert loaded.dtype == np.float32
  cond = editor.condition([manifest_lib.Example(tmp_path / "x.png", "a lion")], None)
  images, boxes, _ = inputs(editor, [[[4, 4, 3, 3]]], batch=1)
  out = jax.jit(editor.edit)(params, images, boxes, jax.tree.map(jnp.asarray, cond.arrays),
                             jax.random.PRNGKey(0))
  assert np.isfinite(np.asarray(out.images)).all()


def test_local_directory_problems_are_listed(tmp_path):
  write_hub_directory(tmp_path / "ok")
  (tmp_path / "ok" / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
  (tmp_path / "ok" / "tokenizer" / "tokenizer.json").unlink()
  with pytest.raises(WeightsError) as error:
    amused.build(local_config(tmp_path / "ok"), "official", None)
  message = str(error.value)
  assert "transformer/diffusion_pytorch_model.safetensors" in message
  assert "tokenizer/tokenizer.json" in message and "hf download amused/amused-256" in message
  with pytest.raises(WeightsError, match="lacks.*fp16"):
    amused.build(local_config(tmp_path / "ok", "fp16"), "official", None)
  write_hub_directory(tmp_path / "mixed", codebook=64)
  with pytest.raises(WeightsError, match="do not fit together.*codebook_size 64"):
    amused.build(local_config(tmp_path / "mixed"), "official", None)


# -- the commands ------------------------------------------------------------------------

def test_edit_command_offline_fails_fast_naming_the_files(cli_env, tmp_path):
  from lr_jax import samples  # pylint: disable=g-import-not-at-top
  samples.write_samples(tmp_path / "s")
  start = time.time()
  proc = cli_helpers.run(cli_env, "lr_jax.edit", "--config", "configs/amused.py",
                         "--image", str(tmp_path / "s" / "chelsea.png"),
                         "--prompt", "a cat wearing sunglasses", "--out", str(tmp_path / "out"),
                         timeout=120)
  text = cli_helpers.assert_clean_error(
      proc, "[amused]", "amused/amused-256", "transformer/diffusion_pytorch_model.safetensors",
      "hf download amused/amused-256", "facebook/dino-vitb16")
  assert "--local-dir weights/amused-256" in text and "--local-dir weights/dino-vitb16" in text
  assert text.splitlines()[2].strip() == (
      "python -m lr_jax.weights download --config configs/amused.py")
  assert max(len(line) for line in text.splitlines()) < 100
  assert time.time() - start < 60
  assert not (tmp_path / "out").exists()
  proc = cli_helpers.run(cli_env, "lr_jax.train", "--config", "configs/amused_tiny.py",
                         "--workdir", str(tmp_path / "wd"), "--config.editor.num_steps=0")
  cli_helpers.assert_clean_error(proc, "editor.num_steps")
  assert not (tmp_path / "wd").exists()


def test_tiny_train_and_edit_commands(cli_env, tmp_path):
  workdir = tmp_path / "wd"
  proc = cli_helpers.run(cli_env, "lr_jax.train", "--config", "configs/amused_tiny.py",
                         "--workdir", str(workdir), "--config.train.epochs=1", "--noprogress",
                         timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "trained 2 steps" in proc.stdout
  from lr_jax import samples  # pylint: disable=g-import-not-at-top
  samples.write_samples(tmp_path / "s")
  proc = cli_helpers.run(cli_env, "lr_jax.edit", "--config", "configs/amused_tiny.py",
                         "--image", str(tmp_path / "s" / "chelsea.png"),
                         "--prompt", "a cat wearing sunglasses", "--out", str(tmp_path / "out"),
                         "--rgn_checkpoint", str(workdir), timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "prompt 'a cat wearing sunglasses'" in proc.stdout
  [record] = list((tmp_path / "out").glob("*.json"))
  data = json.loads(record.read_text())
  assert data["editor"] == "amused" and data["text_condition"]["prompt"] == "a cat wearing sunglasses"
  assert "class" not in data


def test_editor_benchmark_rows_tiny(capsys):
  from lr_jax import editor_bench  # pylint: disable=g-import-not-at-top
  rows = editor_bench.run(["amused"], [1, 2], ["float32"], repeats=1, tiny=True)
  assert [(r["editor"], r["n"], r["steps"]) for r in rows] == [("amused", 1, 4), ("amused", 2, 4)]
  assert all(r["finite"] and r["batched_ms_per_image"] > 0 for r in rows)
  assert rows[1]["separate"] == "measured" and rows[1]["speedup_vs_separate"] > 0
  assert "amused" in capsys.readouterr().out
  with pytest.raises(Exception, match="--editors in"):
    editor_bench.run(["muse"], [1], ["float32"], repeats=1, tiny=True)
