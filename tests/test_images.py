"""Tests for lr_common.image_files (loading: modes, EXIF, errors) and lr_common.pixels (resizing, compositing)."""
import pathlib
import struct
import zlib

import jax
import numpy as np
import pytest
from PIL import Image, ImageFile

from lr_common import image_files as images
from lr_common.image_files import ImageError
from lr_common import pixels


def _save(img: Image.Image, path: pathlib.Path, **kwargs) -> pathlib.Path:
  img.save(path, **kwargs)
  return path


# ---------------------------------------------------------------- modes


def test_rgb_png_is_exact(tmp_path):
  data = np.random.default_rng(0).integers(0, 256, (70, 90, 3), np.uint8)
  path = _save(Image.fromarray(data), tmp_path / "rgb.png")
  loaded = images.load_image(path)
  assert loaded.pixels.dtype == np.float32
  assert loaded.pixels.shape == (70, 90, 3)
  np.testing.assert_array_equal(loaded.pixels, data.astype(np.float32) / 255)
  assert loaded.original_mode == "RGB"
  assert loaded.notes == []
  assert loaded.path == path
  # Kept compactly: the file's own bytes.
  assert loaded.original.dtype == np.uint8
  np.testing.assert_array_equal(loaded.original, data)
  assert (loaded.height, loaded.width) == (70, 90)


def test_grayscale_is_replicated(tmp_path):
  data = np.arange(64 * 80, dtype=np.uint32).reshape(64, 80) % 256
  path = _save(Image.fromarray(data.astype(np.uint8)), tmp_path / "g.png")
  loaded = images.load_image(path)
  expected = np.repeat((data / 255.0)[..., None], 3, axis=-1)
  np.testing.assert_allclose(loaded.pixels, expected, atol=1e-6)
  assert loaded.original_mode == "L"
  assert any("grayscale" in n for n in loaded.notes)


def test_one_bit(tmp_path):
  img = Image.new("1", (64, 64), 0)
  img.putpixel((5, 7), 1)  # (x, y)
  loaded = images.load_image(_save(img, tmp_path / "b.png"))
  assert loaded.original_mode == "1"
  assert loaded.pixels.sum() == 3.0
  np.testing.assert_array_equal(loaded.pixels[7, 5], [1, 1, 1])
  assert loaded.notes


def test_palette_and_palette_transparency(tmp_path):
  img = Image.new("P", (64, 64), 0)
  palette = [0] * 768
  palette[0:6] = [10, 20, 30, 200, 100, 50]
  img.putpalette(palette)
  img.paste(1, (0, 0, 32, 64))
  loaded = images.load_image(_save(img, tmp_path / "p.png"))
  np.testing.assert_allclose(loaded.pixels[0, 0], np.array([200, 100, 50]) / 255,
                             atol=1e-6)
  np.testing.assert_allclose(loaded.pixels[0, 40], np.array([10, 20, 30]) / 255,
                             atol=1e-6)
  assert any("palette" in n for n in loaded.notes)
  # Palette entry 0 transparent: composited over white.
  loaded = images.load_image(
      _save(img, tmp_path / "pt.png", transparency=0))
  np.testing.assert_allclose(loaded.pixels[0, 40], [1, 1, 1], atol=1e-6)
  np.testing.assert_allclose(loaded.pixels[0, 0], np.array([200, 100, 50]) / 255,
                             atol=1e-6)
  assert any("white" in n for n in loaded.notes)


def test_rgba_is_composited_over_white(tmp_path):
  data = np.zeros((64, 64, 4), np.uint8)
  data[:, :32] = [255, 0, 0, 128]   # half-transparent red
  data[:, 32:] = [0, 0, 255, 0]     # fully transparent blue
  loaded = images.load_image(_save(Image.fromarray(data), tmp_path / "a.png"))
  a = 128 / 255
  np.testing.assert_allclose(loaded.pixels[0, 0], [1, 1 - a, 1 - a], atol=1e-6)
  np.testing.assert_allclose(loaded.pixels[0, 40], [1, 1, 1], atol=1e-6)
  assert loaded.original_mode == "RGBA"
  assert any("white" in n for n in loaded.notes)


def test_la_is_composited_over_white(tmp_path):
  data = np.zeros((64, 64, 2), np.uint8)
  data[:, :32] = [100, 255]
  data[:, 32:] = [0, 0]
  img = Image.fromarray(data)
  assert img.mode == "LA"
  loaded = images.load_image(_save(img, tmp_path / "la.png"))
  np.testing.assert_allclose(loaded.pixels[0, 0], [100 / 255] * 3, atol=1e-6)
  np.testing.assert_allclose(loaded.pixels[0, 40], [1, 1, 1], atol=1e-6)


def test_16bit_png_scaled_not_clipped(tmp_path):
  data = np.zeros((64, 64), np.uint16)
  data[0, 0], data[0, 1], data[0, 2], data[0, 3] = 65535, 32768, 1000, 255
  img = Image.fromarray(data)
  assert img.mode == "I;16"
  loaded = images.load_image(_save(img, tmp_path / "g16.png"))
  px = loaded.pixels[0, :4, 0]
  np.testing.assert_allclose(px, [1.0, 32768 / 65535, 1000 / 65535, 255 / 65535],
                             rtol=1e-6)
  assert abs(px[1] - 0.5) < 1e-4
  np.testing.assert_array_equal(loaded.pixels[0, :4, 0], loaded.pixels[0, :4, 2])
  assert any("16-bit" in n for n in loaded.notes)


def test_16bit_big_endian_and_int32_tiff(tmp_path):
  data = np.full((64, 64), 300, np.uint16)
  data[5, 6] = 65535
  img = Image.fromarray(data.astype(">u2"))
  assert img.mode == "I;16B"
  loaded = images.load_image(_save(img, tmp_path / "be.tif"))
  assert loaded.pixels[5, 6, 1] == 1.0
  np.testing.assert_allclose(loaded.pixels[0, 0], [300 / 65535] * 3, rtol=1e-6)
  img = Image.fromarray(data.astype(np.int32))
  assert img.mode == "I"
  loaded = images.load_image(_save(img, tmp_path / "i32.tif"))
  assert loaded.pixels[5, 6, 0] == 1.0
  np.testing.assert_allclose(loaded.pixels[0, 0], [300 / 65535] * 3, rtol=1e-6)


def test_float_tiff(tmp_path):
  data = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
  loaded = images.load_image(_save(Image.fromarray(data), tmp_path / "f.tif"))
  np.testing.assert_allclose(loaded.pixels[..., 1], data, atol=1e-7)
  # Outside [0, 1]: rescaled min-max with a note.
  loaded = images.load_image(
      _save(Image.fromarray(data * 4 - 2), tmp_path / "f2.tif"))
  np.testing.assert_allclose(loaded.pixels[..., 0], data, atol=1e-6)
  assert any("min-max" in n for n in loaded.notes)


def test_cmyk(tmp_path):
  c, m, y, k = 100, 0, 255, 50
  img = Image.new("CMYK", (64, 64), (c, m, y, k))
  loaded = images.load_image(_save(img, tmp_path / "c.tif"))
  expected = [(1 - v / 255) * (1 - k / 255) for v in (c, m, y)]
  np.testing.assert_allclose(loaded.pixels[3, 3], expected, atol=1.5 / 255)
  assert any("CMYK" in n for n in loaded.notes)


@pytest.mark.parametrize("orientation,rot_k", [(6, -1), (3, 2), (8, 1)])
def test_exif_orientation_applied(tmp_path, orientation, rot_k):
  data = np.zeros((64, 96, 3), np.uint8)
  data[:32, :48] = [255, 0, 0]
  data[:32, 48:] = [0, 255, 0]
  data[32:, :48] = [0, 0, 255]
  data[32:, 48:] = [255, 255, 255]
  exif = Image.Exif()
  exif[0x0112] = orientation
  path = _save(Image.fromarray(data), tmp_path / "e.jpg", exif=exif,
               quality=95)
  loaded = images.load_image(path)
  expected = np.rot90(data, k=rot_k).astype(np.float32) / 255
  assert loaded.pixels.shape == expected.shape
  assert np.abs(loaded.pixels - expected).mean() < 0.02
  assert any("EXIF" in n for n in loaded.notes)


def _kinds(rng, height, width):
  """Files of each mode: (name, PIL image, kept as uint8?)."""
  rgb = rng.integers(0, 256, (height, width, 3), np.uint8)
  rgba = np.concatenate([rgb, np.full((height, width, 1), 255, np.uint8)], -1)
  late = rgba.copy()
  late[-1, 3, 3] = 40  # transparent only in the last strip
  return [
      ("rgb.png", Image.fromarray(rgb), True),
      ("rgb.jpg", Image.fromarray(rgb), True),
      ("l.png", Image.fromarray(rgb[..., 0]), True),
      ("p.png", Image.fromarray(rgb).convert("P"), True),
      ("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), True),
      ("opaque.png", Image.fromarray(rgba), True),
      ("late_alpha.png", Image.fromarray(late), False),
      ("g16.png", Image.fromarray(rng.integers(0, 65536, (height, width))
                                  .astype(np.uint16)), False),
      ("i32.tif", Image.fromarray(rng.integers(-9, 70000, (height, width))
                                  .astype(np.int32)), False),
      ("f.tif", Image.fromarray((rng.random((height, width)) * 3 - 1)
                                .astype(np.float32)), False),
  ]


def test_converted_a_strip_at_a_time(tmp_path, monkeypatch):
  """With 7-row strips the values and notes are those of one strip, and 8-bit files
  stay uint8 (transparency or more bits: float32)."""
  rng = np.random.default_rng(7)
  for name, img, compact in _kinds(rng, 67, 70):
    path = _save(img, tmp_path / name)
    whole = images.load_image(path)
    with monkeypatch.context() as patch:
      patch.setattr(pixels, "STRIP_ROWS", 7)
      stripped = images.load_image(path)
    assert stripped.original.dtype == (np.uint8 if compact else np.float32), name
    np.testing.assert_array_equal(stripped.original, whole.original)
    assert stripped.notes == whole.notes
    assert stripped.pixels.dtype == np.float32
    assert 0 <= stripped.pixels.min() and stripped.pixels.max() <= 1
    if compact:
      np.testing.assert_array_equal(stripped.pixels,
                                    whole.original.astype(np.float32) / 255)


# ---------------------------------------------------------------- errors


def test_missing_file(tmp_path):
  with pytest.raises(ImageError, match="does not exist") as e:
    images.load_image(tmp_path / "nope.png")
  assert "nope.png" in str(e.value)


def test_folder_is_not_an_image(tmp_path):
  with pytest.raises(ImageError, match="not a regular file"):
    images.load_image(tmp_path)


def test_text_file_named_png(tmp_path):
  path = tmp_path / "notes.png"
  path.write_text("this is not an image\n")
  with pytest.raises(ImageError, match="not a recognised image") as e:
    images.load_image(path)
  assert "notes.png" in str(e.value)


def test_truncated_png(tmp_path):
  data = np.random.default_rng(1).integers(0, 256, (100, 100, 3), np.uint8)
  path = _save(Image.fromarray(data), tmp_path / "t.png")
  raw = path.read_bytes()
  path.write_bytes(raw[: len(raw) // 2])
  with pytest.raises(ImageError, match="truncated or corrupt") as e:
    images.load_image(path)
  assert "t.png" in str(e.value)


def test_too_small(tmp_path):
  path = _save(Image.new("RGB", (40, 40)), tmp_path / "small.png")
  with pytest.raises(ImageError) as e:
    images.load_image(path)
  msg = str(e.value)
  assert "40x40" in msg and "64" in msg and "10000" in msg


def test_too_large_is_rejected_from_the_header(tmp_path, monkeypatch):
  path = _save(Image.new("1", (12000, 64)), tmp_path / "wide.png")
  decoded = []
  monkeypatch.setattr(ImageFile.ImageFile, "load",
                      lambda self: decoded.append(1) or None)
  with pytest.raises(ImageError) as e:
    images.load_image(path)
  msg = str(e.value)
  assert "12000x64" in msg and "10000" in msg and "wide.png" in msg
  assert not decoded  # rejected before decoding any pixel


def _png_with_claimed_size(path: pathlib.Path, width: int, height: int):
  """A real small PNG whose IHDR claims another size (CRC fixed up)."""
  _save(Image.new("L", (8, 8)), path)
  raw = bytearray(path.read_bytes())
  assert raw[12:16] == b"IHDR"
  raw[16:24] = struct.pack(">II", width, height)
  raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
  path.write_bytes(bytes(raw))


def test_decompression_bomb_header(tmp_path):
  path = tmp_path / "bomb.png"
  _png_with_claimed_size(path, 30000, 30000)
  with pytest.raises(ImageError, match="too large") as e:
    images.load_image(path, max_side=100000)
  assert "bomb.png" in str(e.value)
  _png_with_claimed_size(path, 30000, 30)
  with pytest.raises(ImageError, match="is 30000x30 "):
    images.load_image(path)


# ---------------------------------------------------------------- save/list


def test_save_uint8_as_is(tmp_path):
  data = np.random.default_rng(5).integers(0, 256, (65, 70, 3), np.uint8)
  out = images.save_image(tmp_path / "u.png", data)
  np.testing.assert_array_equal(np.asarray(Image.open(out)), data)
  # Floats are rounded as pixels.to_uint8 does.
  floats = data / 255.0 + 0.001
  images.save_image(tmp_path / "f.png", floats)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "f.png")),
                                pixels.to_uint8(floats))
  np.testing.assert_array_equal(pixels.to_uint8(floats), data)


def test_save_and_list(tmp_path):
  data = np.random.default_rng(2).integers(0, 256, (65, 70, 3)) / 255.0
  out = images.save_image(tmp_path / "a" / "b" / "x.png", data)
  assert out.exists()
  np.testing.assert_array_equal(np.asarray(Image.open(out)),
                                np.round(data * 255).astype(np.uint8))
  images.save_image(tmp_path / "a" / "y.JPG", data)
  images.save_image(tmp_path / "a" / "g.png", data[..., :1])
  (tmp_path / "a" / "readme.txt").write_text("x")
  (tmp_path / "a" / ".hidden.png").write_bytes(b"")
  listed = images.list_images(tmp_path / "a")
  assert [p.name for p in listed] == ["g.png", "y.JPG"]
  assert images.load_image(tmp_path / "a" / "y.JPG").pixels.shape == (65, 70, 3)
  with pytest.raises(ImageError, match="unsupported extension"):
    images.save_image(tmp_path / "z.xyz", data)
  with pytest.raises(ValueError, match="NaN"):
    images.save_image(tmp_path / "n.png", data * np.nan)
  with pytest.raises(ImageError, match="not an existing folder"):
    images.list_images(tmp_path / "missing")


# ---------------------------------------------------------------- resizing


def test_to_model_input_is_antialiased():
  checker = (np.indices((512, 512)).sum(0) % 2).astype(np.float32)
  out = pixels.to_model_input(np.repeat(checker[..., None], 3, -1), size=256)
  assert out.shape == (256, 256, 3) and out.dtype == np.float32
  # A 1-pixel checkerboard halved must average out (subsampling gives 0/1).
  assert np.abs(out[4:-4, 4:-4] - 0.5).max() < 0.02


def test_to_model_input_anisotropic_linear_ramp():
  height, width, size = 150, 600, 64
  ramp = np.tile(np.arange(width, dtype=np.float32) / (width - 1), (height, 1))
  out = pixels.to_model_input(np.stack([ramp] * 3, -1), size=size)
  # The whole width maps onto `size` columns: column j samples the source at
  # x = (j + 0.5) * width / size - 0.5, and a cubic filter reproduces a ramp.
  j = np.arange(size)
  expected = ((j + 0.5) * width / size - 0.5) / (width - 1)
  np.testing.assert_allclose(out[size // 2, 4:-4, 0], expected[4:-4], atol=2e-3)
  np.testing.assert_allclose(out[:, 10, 0], np.full(size, out[0, 10, 0]),
                             atol=1e-5)  # constant down each column


@pytest.mark.parametrize("height,width,size", [
    (150, 600, 64), (600, 150, 64), (300, 451, 256), (40, 72, 256), (256, 256, 256),
    (700, 33, 64), (90, 200, 512)])
def test_to_model_input_uint8_is_the_float_path(height, width, size):
  data = np.random.default_rng(height).integers(0, 256, (height, width, 3), np.uint8)
  as_float = data.astype(np.float32) / 255
  np.testing.assert_array_equal(pixels.to_model_input(data, size),
                                pixels.to_model_input(as_float, size))
  assert pixels.to_float(data).dtype == np.float32
  np.testing.assert_array_equal(pixels.to_float(data), as_float)


# ---------------------------------------------------------------- composite


def test_composite_matches_jax_resize_reference():
  rng = np.random.default_rng(3)
  height, width, small = 300, 200, 64
  original = rng.random((height, width, 3), dtype=np.float32)
  edited = rng.random((small, small, 3), dtype=np.float32)
  mask = np.zeros((small, small, 1), np.float32)
  mask[10:30, 20:40, 0] = rng.random((20, 20))
  out = pixels.composite_to_original(original, edited, mask)
  # Independent reference: jax.image.resize (half-pixel centres) in full.
  m = np.clip(np.asarray(jax.image.resize(mask, (height, width, 1), "linear")),
              0, 1)
  e = np.clip(np.asarray(jax.image.resize(edited, (height, width, 3), "cubic")),
              0, 1)
  np.testing.assert_allclose(out, e * m + original * (1 - m), atol=2e-5)
  outside = m[..., 0] == 0
  assert outside.mean() > 0.5
  np.testing.assert_array_equal(out[outside], original[outside])


def test_composite_full_resolution_photo():
  rng = np.random.default_rng(4)
  height, width, small = 2000, 3000, 256  # a 3000x2000 photo
  original = rng.random((height, width, 3), dtype=np.float32)
  edited = np.full((small, small, 3), 0.25, np.float32)
  mask = np.zeros((small, small), np.float32)
  mask[64:128, 100:200] = 1.0
  out = pixels.composite_to_original(original, edited, mask)
  assert out.shape == (height, width, 3) and out.dtype == np.float32
  sy, sx = height / small, width / small
  # Bilinear upsampling reads input pixels within 1 of the sample point, so
  # beyond one input pixel (+2 output pixels) of the box the mask is exactly 0.
  rows_out = np.ones(height, bool)
  rows_out[int(63 * sy) - 2:int(129 * sy) + 2] = False
  cols_out = np.ones(width, bool)
  cols_out[int(99 * sx) - 2:int(201 * sx) + 2] = False
  outside = rows_out[:, None] | cols_out[None, :]
  np.testing.assert_array_equal(out[outside], original[outside])
  inner = out[int(65 * sy) + 2:int(127 * sy) - 2, int(101 * sx) + 2:
              int(199 * sx) - 2]
  np.testing.assert_allclose(inner, 0.25, atol=1e-6)
  # Nothing changes for an all-zero mask.
  same = pixels.composite_to_original(original, edited, mask * 0)
  np.testing.assert_array_equal(same, original)


def test_composite_rejects_bad_shapes():
  original = np.zeros((100, 80, 3), np.float32)
  with pytest.raises(ValueError, match="mask_small"):
    pixels.composite_to_original(original, np.zeros((16, 16, 3)),
                                 np.zeros((8, 8)))
  with pytest.raises(ValueError, match="original"):
    pixels.composite_to_original(np.zeros((100, 80)), np.zeros((16, 16, 3)),
                                 np.zeros((16, 16)))
  with pytest.raises(ValueError, match="finite"):
    pixels.composite_to_original(original, np.zeros((16, 16, 3)),
                                 np.full((16, 16), np.nan))


def test_composite_uint8_matches_rounded_float_composite():
  rng = np.random.default_rng(8)
  data = rng.integers(0, 256, (300, 200, 3), np.uint8)
  edited = rng.random((64, 64, 3), dtype=np.float32) * 1.4 - 0.2
  mask = np.zeros((64, 64), np.float32)
  mask[10:30, 20:40] = rng.random((20, 20))
  as_float = pixels.composite_to_original(data.astype(np.float32) / 255, edited, mask)
  out = pixels.composite_to_original(data, edited, mask)
  assert out.dtype == np.uint8 and out.shape == data.shape
  np.testing.assert_array_equal(out, pixels.to_uint8(as_float))
  # A float original asked for uint8 gives the same; uint8 asked for float the float.
  np.testing.assert_array_equal(
      pixels.composite_to_original(data.astype(np.float32) / 255, edited, mask,
                                   dtype=np.uint8), out)
  np.testing.assert_array_equal(
      pixels.composite_to_original(data, edited, mask, dtype=np.float32), as_float)
  with pytest.raises(ValueError, match="dtype"):
    pixels.composite_to_original(data, edited, mask, dtype=np.float64)


def test_changed_region():
  original = np.zeros((50, 40, 3), np.uint8)
  assert pixels.changed_region(original.copy(), original) is None
  result = original.copy()
  result[10, 5, 2] = 1
  result[20, 30, 0] = 9
  assert pixels.changed_region(result, original) == [10, 5, 11, 26]
  # A float original is compared as it is written (8 bit).
  assert pixels.changed_region(result, original + np.float32(0.001)) == [10, 5, 11, 26]
  with pytest.raises(ValueError, match="shape"):
    pixels.changed_region(result, original[1:])


# ---------------------------------------------------------------- large photos


def _photo(height, width):
  """A smooth 8-bit photo with fine texture (compresses like one)."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  base = np.stack([x / width, y / height, (x + y) / (width + height)], -1) * 200
  texture = np.random.default_rng(9).integers(0, 40, (height, width, 1))
  return (base + texture).astype(np.uint8)


@pytest.mark.parametrize("name", ["photo.jpg", "photo.png"])
def test_large_photo_compact_path(tmp_path, name):
  """A 4000x3000 JPEG and PNG: kept as uint8, the model input is the float path's,
  the composite equals the float composite as written, outside the mask's window
  every pixel is the input's, and the window bounds the upsampled mask."""
  height, width, small = 3000, 4000, 256
  path = _save(Image.fromarray(_photo(height, width)), tmp_path / name)
  loaded = images.load_image(path)
  assert loaded.original.dtype == np.uint8
  assert loaded.original.shape == (height, width, 3)
  as_float = loaded.pixels
  model_input = pixels.to_model_input(loaded.original, small)
  np.testing.assert_array_equal(model_input, pixels.to_model_input(as_float, small))

  edited = 1.0 - model_input
  mask = np.zeros((small, small), np.float32)
  mask[64:128, 100:200] = 1.0
  mask[60:64, 100:200] = 0.5  # feathered edge
  result = pixels.composite_to_original(loaded.original, edited, mask)
  assert result.dtype == np.uint8 and result.shape == (height, width, 3)
  float_result = pixels.composite_to_original(as_float, edited, mask)
  np.testing.assert_array_equal(result, pixels.to_uint8(float_result))

  top, bottom, left, right = pixels.composite_window(mask, (height, width))
  outside = np.ones((height, width), bool)
  outside[top:bottom, left:right] = False
  np.testing.assert_array_equal(result[outside], loaded.original[outside])
  np.testing.assert_array_equal(float_result[outside], as_float[outside])
  # The window is the upsampled mask's bounding box plus a margin of at most one
  # model pixel (+ 2 output pixels) on each side.
  upsampled = pixels.resize_channels(mask[..., None], (height, width),
                                     Image.Resampling.BILINEAR)[..., 0] > 0
  rows, cols = np.flatnonzero(upsampled.any(1)), np.flatnonzero(upsampled.any(0))
  sy, sx = height / small, width / small
  assert top <= rows[0] and rows[-1] < bottom
  assert left <= cols[0] and cols[-1] < right
  assert rows[0] - top <= sy + 2 and bottom - 1 - rows[-1] <= sy + 2
  assert cols[0] - left <= sx + 2 and right - 1 - cols[-1] <= sx + 2
  changed = pixels.changed_region(result, loaded.original)
  assert changed is not None
  c_top, c_left, c_h, c_w = changed
  assert top <= c_top and c_top + c_h <= bottom
  assert left <= c_left and c_left + c_w <= right
