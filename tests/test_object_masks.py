"""Object masks: the manifest's mask column, PIE-Bench's mapping file and its run-length masks."""
import json

import numpy as np
import pytest
from PIL import Image

from lr_jax.files import manifest
from lr_jax.evaluation import object_masks
from lr_jax.files import pie_bench


def _image(path, hw=(512, 512)):
  Image.fromarray(np.zeros(hw + (3,), np.uint8)).save(path)


def test_run_length_masks_are_start_length_pairs_in_row_major_order():
  mask = pie_bench.decode_rle([3, 2, 10, 4], shape=(3, 5))
  expected = np.zeros(15, bool)
  expected[[3, 4, 10, 11, 12, 13]] = True
  assert (mask == expected.reshape(3, 5)).all()
  assert not mask[0, 0] and not mask[-1, -1]           # no border fill
  assert pie_bench.decode_rle([13, 10], shape=(3, 5)).sum() == 2   # cut at the end


def test_mapping_file_reads_as_a_manifest(tmp_path):
  (tmp_path / "annotation_images" / "0_random").mkdir(parents=True)
  _image(tmp_path / "annotation_images" / "0_random" / "000.jpg")
  mapping = {"000": {"image_path": "0_random/000.jpg", "original_prompt": "a [cat] sitting",
                     "editing_prompt": "a [tiger] sitting", "editing_instruction": "x",
                     "editing_type_id": "0", "blended_word": "cat tiger",
                     "mask": [512 * 100 + 200, 50, 512 * 101 + 200, 50]}}
  (tmp_path / "mapping_file.json").write_text(json.dumps(mapping))
  [ex] = manifest.read_manifest(tmp_path / "mapping_file.json")
  assert ex.prompt == "a tiger sitting" and ex.source_prompt == "a cat sitting"
  assert ex.image_path == (tmp_path / "annotation_images" / "0_random" / "000.jpg").resolve()
  mask = object_masks.load_mask(ex, (512, 512))
  assert mask.sum() == 100 and mask[100, 200] and mask[101, 249] and not mask[102, 200]
  with pytest.raises(object_masks.MaskError, match="512x512"):
    object_masks.load_mask(ex, (480, 640))


def test_bad_mapping_entries_are_listed_together(tmp_path):
  mapping = {"a": {"image_path": "x.jpg", "editing_prompt": "a dog", "mask": [1, 2, 3]},
             "b": {"image_path": "y.jpg", "mask": [0, 1]}}
  (tmp_path / "mapping_file.json").write_text(json.dumps(mapping))
  with pytest.raises(manifest.ManifestError) as e:
    manifest.read_manifest(tmp_path / "mapping_file.json")
  assert "entry 'a'" in str(e.value) and "even-length" in str(e.value)
  assert "entry 'b'" in str(e.value) and "editing_prompt" in str(e.value)


def test_run_lengths_of_any_size_are_checked_not_overflowed(tmp_path):
  mapping = {"a": {"image_path": "x.jpg", "editing_prompt": "a dog", "mask": [2**63, 5]},
             "b": {"image_path": "x.jpg", "editing_prompt": "a dog", "mask": [0, 1, 2**64, 1]}}
  (tmp_path / "mapping_file.json").write_text(json.dumps(mapping))
  with pytest.raises(manifest.ManifestError) as e:
    manifest.read_manifest(tmp_path / "mapping_file.json")
  assert "entry 'a'" in str(e.value) and "run 0 starts at pixel 9223372036854775808" in str(e.value)
  assert "entry 'b'" in str(e.value) and "run 1" in str(e.value) and "< 262144" in str(e.value)
  # A run may end past the image (it is cut), whatever its length.
  assert pie_bench.decode_rle([13, 2**70], shape=(3, 5)).sum() == 2
  assert pie_bench.rle_problem([13, 2**70], shape=(3, 5)) is None


def test_mask_column_in_json_and_csv(tmp_path):
  _image(tmp_path / "a.png", (20, 30))
  m = np.zeros((20, 30), np.uint8)
  m[5:10, 5:15] = 255
  Image.fromarray(m).save(tmp_path / "a_mask.png")
  rgba = np.zeros((20, 30, 4), np.uint8)
  rgba[..., :3] = 255                   # white everywhere: the alpha says where the object is
  rgba[0:4, 0:4, 3] = 255
  Image.fromarray(rgba).save(tmp_path / "cutout.png")
  (tmp_path / "m.csv").write_text("image,prompt,mask\na.png,a lion,a_mask.png\n"
                                  "a.png,a tiger,cutout.png\na.png,a cat,\n")
  examples = manifest.read_manifest(tmp_path / "m.csv")
  masks = object_masks.load_masks(examples, [(20, 30)] * 3)
  assert masks[0].sum() == 50 and masks[0][5, 5] and not masks[0][4, 5]
  assert masks[1].sum() == 16 and masks[2] is None
  (tmp_path / "m.json").write_text(json.dumps([{"image": "a.png", "prompt": "x",
                                                "mask": "missing.png"}]))
  with pytest.raises(manifest.ManifestError, match="missing.png"):
    manifest.read_manifest(tmp_path / "m.json")


def test_unusable_masks_are_reported_together(tmp_path):
  Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "empty.png")
  Image.fromarray(np.full((10, 10), 255, np.uint8)).save(tmp_path / "small.png")
  (tmp_path / "broken.png").write_bytes(b"not an image")
  examples = [manifest.Example(tmp_path / "a.png", "x", mask_path=tmp_path / n)
              for n in ("empty.png", "small.png", "broken.png")]
  with pytest.raises(object_masks.MaskError) as e:
    object_masks.load_masks(examples, [(20, 30)] * 3)
  text = str(e.value)
  assert text.startswith("3 unusable") and "empty" in text and "10x10" in text
  assert "cannot be read" in text
