"""Tests for lr_jax.files.manifest: JSON / JSON-lines / CSV manifests and folders."""
import json
import pathlib

import pytest
from PIL import Image

from lr_jax.files import manifest
from lr_jax.files.manifest import Example, ManifestError


@pytest.fixture
def data_dir(tmp_path) -> pathlib.Path:
  (tmp_path / "imgs").mkdir()
  for name in ("cat.png", "dog.jpg"):
    Image.new("RGB", (64, 64), (10, 20, 30)).save(tmp_path / "imgs" / name)
  return tmp_path


def _write_json(path: pathlib.Path, records) -> pathlib.Path:
  path.write_text(json.dumps(records))
  return path


def test_json_manifest_relative_paths(data_dir):
  path = _write_json(data_dir / "m.json", [
      {"image": "imgs/cat.png", "prompt": " a lion ", "class_id": 291},
      {"image": "imgs/dog.jpg", "prompt": "a rooster",
       "source_prompt": "a dog"},
  ])
  examples = manifest.read_manifest(path)
  assert examples == [
      Example((data_dir / "imgs" / "cat.png").resolve(), "a lion", None, 291),
      Example((data_dir / "imgs" / "dog.jpg").resolve(), "a rooster", "a dog",
              None),
  ]


def test_manifest_paths_relative_to_manifest_not_cwd(data_dir, monkeypatch):
  sub = data_dir / "lists"
  sub.mkdir()
  path = _write_json(sub / "m.json", [{"image": "../imgs/cat.png",
                                       "prompt": "x"}])
  monkeypatch.chdir(data_dir / "imgs")
  (example,) = manifest.read_manifest(path)
  assert example.image_path.is_file()
  assert example.image_path.samefile(data_dir / "imgs" / "cat.png")


def test_absolute_image_path(data_dir):
  absolute = str((data_dir / "imgs" / "cat.png").resolve())
  path = _write_json(data_dir / "m.json", [{"image": absolute, "prompt": "x"}])
  assert manifest.read_manifest(path)[0].image_path == pathlib.Path(absolute)


def test_csv_manifest(data_dir):
  path = data_dir / "m.csv"
  path.write_text("image,prompt,source_prompt,class_id\n"
                  "imgs/cat.png,\"a lion, roaring\",,7\n"
                  "\n"
                  "imgs/dog.jpg,cat face,a dog,\n"
                  "imgs/dog.jpg,a tiger,,292.0\n")   # as spreadsheets save whole numbers
  examples = manifest.read_manifest(path)
  assert [e.prompt for e in examples] == ["a lion, roaring", "cat face", "a tiger"]
  assert [e.source_prompt for e in examples] == [None, "a dog", None]
  assert [e.class_id for e in examples] == [7, None, 292]
  path.write_text("image,prompt,class_id\nimgs/cat.png,a lion,3.5\n")
  with pytest.raises(ManifestError, match="class_id must be an integer, got '3.5'"):
    manifest.read_manifest(path)
  assert examples[1].image_path == (data_dir / "imgs" / "dog.jpg").resolve()


def test_csv_minimal_columns(data_dir):
  path = data_dir / "m.csv"
  path.write_text("image,prompt\nimgs/cat.png,a lion\n")
  (example,) = manifest.read_manifest(path)
  assert example.source_prompt is None and example.class_id is None


def test_jsonl_manifest(data_dir):
  path = data_dir / "m.jsonl"
  path.write_text('{"image": "imgs/cat.png", "prompt": "a"}\n\n'
                  '{"image": "imgs/dog.jpg", "prompt": "b"}\n')
  assert [e.prompt for e in manifest.read_manifest(path)] == ["a", "b"]


def test_typo_key_lists_allowed_keys(data_dir):
  path = _write_json(data_dir / "m.json", [
      {"image": "imgs/cat.png", "promt": "a lion"}])
  with pytest.raises(ManifestError) as e:
    manifest.read_manifest(path)
  msg = str(e.value)
  assert "'promt'" in msg and "did you mean 'prompt'" in msg
  for key in ("image", "prompt", "source_prompt", "class_id"):
    assert key in msg
  assert "missing required key 'prompt'" in msg


def test_csv_bad_header(data_dir):
  path = data_dir / "m.csv"
  path.write_text("img,prompt,clas_id\nimgs/cat.png,a,1\n")
  with pytest.raises(ManifestError) as e:
    manifest.read_manifest(path)
  msg = str(e.value)
  assert "missing required column 'image'" in msg
  assert "'clas_id'" in msg and "did you mean 'class_id'" in msg


def test_all_bad_rows_reported_together(data_dir):
  path = _write_json(data_dir / "m.json", [
      {"image": "imgs/cat.png", "prompt": "   "},
      {"image": "imgs/cat.png", "prompt": "ok"},
      {"image": "imgs/dog.jpg", "prompt": "b", "class_id": "seven"},
      {"image": "imgs/dog.jpg", "prompt": "b", "class_id": -1},
      "not an object",
      {"image": "imgs/dog.jpg", "prompt": "b", "class_id": 1000},
      {"image": "imgs/dog.jpg", "prompt": "b", "class_id": 2**70},
  ])
  with pytest.raises(ManifestError) as e:
    manifest.read_manifest(path)
  msg = str(e.value)
  assert "6 bad entries" in msg
  assert "entry 0" in msg and "prompt must be a non-empty" in msg
  assert "entry 1" not in msg
  assert "entry 2" in msg and "'seven'" in msg
  assert "entry 3" in msg and "ImageNet class in 0..999, got -1" in msg
  assert "entry 4" in msg
  assert "got 1000" in msg and f"got {2**70}" in msg   # checked here, not after models load


def test_class_ids_are_imagenets():
  from lr_jax.encoders import imagenet
  assert manifest.IMAGENET_CLASSES == imagenet.NUM_CLASSES


def test_missing_images_listed_at_once(data_dir):
  path = _write_json(data_dir / "m.json", [
      {"image": "imgs/cat.png", "prompt": "a"},
      {"image": "imgs/gone1.png", "prompt": "b"},
      {"image": "gone2.jpg", "prompt": "c"},
  ])
  with pytest.raises(ManifestError) as e:
    manifest.read_manifest(path)
  msg = str(e.value)
  assert "2 image file(s) not found" in msg
  assert "gone1.png" in msg and "gone2.jpg" in msg and "cat.png" not in msg
  assert len(manifest.read_manifest(path, check_images=False)) == 3


@pytest.mark.parametrize("name,text,match", [
    ("m.json", "[]", "no entries"),
    ("m.csv", "image,prompt\n", "no entries"),
    ("m.csv", "", "no header"),
    ("m.json", "{\"image\": \"a.png\"}", "list of objects"),
    ("m.json", "[{,", "invalid JSON"),
    ("m.yaml", "- image: a", "unsupported manifest type"),
])
def test_malformed_manifests(tmp_path, name, text, match):
  path = tmp_path / name
  path.write_text(text)
  with pytest.raises(ManifestError, match=match):
    manifest.read_manifest(path)


def test_missing_manifest(tmp_path):
  with pytest.raises(ManifestError, match="does not exist"):
    manifest.read_manifest(tmp_path / "none.json")


def test_examples_from_folder(data_dir):
  examples = manifest.examples_from_folder(data_dir / "imgs", "a lion",
                                           class_id=3)
  assert [e.image_path.name for e in examples] == ["cat.png", "dog.jpg"]
  assert all(e.prompt == "a lion" and e.class_id == 3 for e in examples)
  with pytest.raises(ManifestError, match="non-empty"):
    manifest.examples_from_folder(data_dir / "imgs", "  ")
  by_class = manifest.examples_from_folder(data_dir / "imgs", "", class_id=5)
  assert [e.class_id for e in by_class] == [5, 5]
  (data_dir / "empty").mkdir()
  with pytest.raises(ManifestError, match="no images found"):
    manifest.examples_from_folder(data_dir / "empty", "x")
  with pytest.raises(ManifestError, match="not an existing folder"):
    manifest.examples_from_folder(data_dir / "nope", "x")
