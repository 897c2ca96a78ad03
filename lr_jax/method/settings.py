"""Typed settings of the method, built once from the ConfigDict and checked up front.

Each dataclass mirrors one config section field for field (`SECTION`), is frozen and
hashable, and is what the jitted steps take as a static argument: no ConfigDict
travels into jit. Field metadata says what a setting is for, so the key lists the
workdir guards need are derived here instead of kept by hand:

  * `rgn`: a trained RGN's scores mean other boxes when it changes (the checkpoint
    guard of `--rgn_checkpoint`);
  * `resumable`: may change between a run and its resumption (`train.max_steps`).

Out-of-range values raise `SettingsError` (one line naming the config key) when the
settings are built, before any model is loaded.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Iterator

import numpy as np

from lr_common.canvas import CANVASES
from lr_common.errors import SettingsError  # pylint: disable=unused-import (re-exported)
from lr_jax.method import losses
from lr_jax.method import rgn as rgn_lib

_RGN = {"rgn": True}
WINDOW_MODES = ("auto", "on", "off")   # lr_jax.method.window
_RESUMABLE = {"resumable": True}




def _fail(section: str, name: str, value: Any, need: str) -> None:
  raise SettingsError(f"config {section}.{name} must be {need}, got {value!r}")


# JAX computes in int32 and float32 (x64 is off): integers of the config must fit int32,
# and numbers that enter the jitted steps must be numbers float32 can hold.
INT32_MAX = 2**31 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)   # the smallest normal float32
# Settings that size arrays: larger values only exhaust memory (or overflow the shape).
MAX_ROI_SIZE = 64          # a 64 x 64 pool per box is finer than any DINO patch grid here
MAX_SAMPLING_RATIO = 64    # samples per pooled cell and axis
MAX_VIEWS = 256            # random crops per edit
MAX_FEATURES = 65536       # RGN layer widths


def _int(section: str, name: str, value: Any, low: int, high: int = INT32_MAX,
         why: str = "JAX's int32") -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    _fail(section, name, value, f"an integer >= {low}")
  if value > high:
    _fail(section, name, value, f"at most {high} ({why})")


def _finite(section: str, name: str, value: Any, low: float | None = None,
            strict: bool = False, float32: bool = True) -> None:
  """A finite number (above `low`); with `float32` (a setting the jitted steps compute
  with) also one that float32 holds: at most FLOAT32_MAX in size, and 0 or at least
  FLOAT32_TINY."""
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  if ok and low is not None:
    ok = value > low if strict else value >= low
  if not ok:
    bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
    _fail(section, name, value, f"a finite number{bound}")
  if float32 and (abs(value) > FLOAT32_MAX or 0 < abs(value) < FLOAT32_TINY):
    _fail(section, name, value, f"a number float32 holds (0, or between {FLOAT32_TINY:.2g} "
          f"and {FLOAT32_MAX:.2g} in size)")


def check_integers(config, skip: tuple[str, ...] = ("seed",)) -> None:
  """Every integer of the config (editor sections included) fits JAX's int32, except
  the keys in `skip` (a seed may be any integer: `lr_common.seeds`)."""
  def walk(value: Any, key: str) -> None:
    if key in skip:
      return
    if hasattr(value, "items"):
      for k, v in value.items():
        walk(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple)):
      for v in value:
        walk(v, key)
    elif isinstance(value, int) and not isinstance(value, bool) and not (
        -INT32_MAX - 1 <= value <= INT32_MAX):
      raise SettingsError(f"config {key} must be an integer in [{-INT32_MAX - 1}, "
                          f"{INT32_MAX}] (JAX's int32), got {value!r}")
  walk(config, "")


@dataclasses.dataclass(frozen=True)
class RegionSettings:
  """Anchors, box proposals and ROI pooling (paper Sec. 3.1)."""
  SECTION: ClassVar[str] = "region"
  num_anchors: int = 4                     # K (a trained RGN scores each anchor alone)
  sizes: tuple[int, ...] = dataclasses.field(default=(3, 5, 7, 9, 11, 13, 15), metadata=_RGN)
  roi_size: int = dataclasses.field(default=7, metadata=_RGN)
  sampling_ratio: int = dataclasses.field(default=2, metadata=_RGN)
  # How a photo is placed in the editor's square (`lr_common.canvas`): "pad" keeps its
  # aspect ratio, "squeeze" stretches it (a trained RGN scores boxes of one canvas).
  canvas: str = dataclasses.field(default="pad", metadata=_RGN)
  # Window mode (`lr_jax.method.window`): the kept box edited once more in a square window
  # cut from the original, window_scale x the box's longer side. Host side only, so
  # left out of equality and hash: changing them compiles nothing again.
  window: str = dataclasses.field(default="auto", metadata=_RESUMABLE, compare=False)
  window_scale: float = dataclasses.field(default=2.0, metadata=_RESUMABLE, compare=False)

  def __post_init__(self):
    s = self.SECTION
    if self.canvas not in CANVASES:
      _fail(s, "canvas", self.canvas, f"one of {', '.join(CANVASES)}")
    if self.window not in WINDOW_MODES:
      _fail(s, "window", self.window, f"one of {', '.join(WINDOW_MODES)}")
    # Host side, float64; any size works (the window stops at the photo's edges).
    _finite(s, "window_scale", self.window_scale, 1.0, float32=False)
    _int(s, "num_anchors", self.num_anchors, 1)
    sizes = self.sizes
    if (not isinstance(sizes, tuple) or not sizes
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sizes)):
      _fail(s, "sizes", sizes, "a non-empty tuple of positive integers (box sides in tokens)")
    if len(set(sizes)) != len(sizes):
      _fail(s, "sizes", sizes, "free of repeats (each proposal a different size)")
    _int(s, "roi_size", self.roi_size, 1, MAX_ROI_SIZE, "it sizes the pool of every box")
    _int(s, "sampling_ratio", self.sampling_ratio, 0,   # 0: adaptive, as torchvision
         MAX_SAMPLING_RATIO, "it sizes the samples of every pooled cell")

  @property
  def num_boxes(self) -> int:
    """M, the proposals per anchor."""
    return len(self.sizes)

  def check_grid(self, grid: int) -> None:
    """Raises SettingsError when anchors or boxes do not fit a grid x grid token map."""
    if self.num_anchors > grid * grid:
      _fail(self.SECTION, "num_anchors", self.num_anchors,
            f"at most {grid * grid} (the editor's {grid}x{grid} token grid)")
    if max(self.sizes) > grid:
      _fail(self.SECTION, "sizes", self.sizes,
            f"at most {grid} tokens each (the editor's {grid}x{grid} grid; larger boxes "
            f"would be clipped into duplicates)")


@dataclasses.dataclass(frozen=True)
class RGNSettings:
  """The region generation network's widths."""
  SECTION: ClassVar[str] = "rgn"
  conv_features: tuple[int, ...] = dataclasses.field(default=(256, 128), metadata=_RGN)
  dense_features: int = dataclasses.field(default=256, metadata=_RGN)

  def __post_init__(self):
    if (not isinstance(self.conv_features, tuple) or not self.conv_features or any(
        isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_FEATURES
        for v in self.conv_features)):
      _fail(self.SECTION, "conv_features", self.conv_features,
            f"a tuple of integers in [1, {MAX_FEATURES}] (layer widths)")
    _int(self.SECTION, "dense_features", self.dense_features, 1, MAX_FEATURES, "a layer width")


@dataclasses.dataclass(frozen=True)
class SelectionSettings:
  """How one proposal per anchor is chosen in training (`rgn.selection_loss`)."""
  SECTION: ClassVar[str] = "selection"
  estimator: str = "straight_through"
  tau: float = 1.0

  def __post_init__(self):
    if self.estimator not in rgn_lib.ESTIMATORS:
      _fail(self.SECTION, "estimator", self.estimator, f"one of {rgn_lib.ESTIMATORS}")
    _finite(self.SECTION, "tau", self.tau, 0.0, strict=True)


@dataclasses.dataclass(frozen=True)
class LossSettings:
  """Weights of the loss terms (`losses.TERMS`, paper Eq. 3) and CLIP views."""
  SECTION: ClassVar[str] = "loss"
  weights: tuple[tuple[str, float], ...] = tuple((n, 1.0) for n in losses.TERMS)
  num_views: int = 0     # > 0: guidance and direction averaged over random crops

  def __post_init__(self):
    names = [n for n, _ in self.weights]
    if names != list(losses.TERMS):
      raise SettingsError(f"config loss needs a weight for each term {list(losses.TERMS)}, "
                          f"got {names}")
    for name, weight in self.weights:
      _finite(self.SECTION, name, weight, 0.0)
    _int(self.SECTION, "num_views", self.num_views, 0, MAX_VIEWS, "crops per edit, all in memory")

  @classmethod
  def from_section(cls, section: dict[str, Any]) -> "LossSettings":
    unknown = sorted(set(section) - set(losses.TERMS) - {"num_views"})
    if unknown:
      raise SettingsError(f"config loss has no term {unknown[0]!r}; terms: "
                          f"{', '.join(losses.TERMS)}")
    return cls(weights=tuple((n, section[n]) for n in losses.TERMS if n in section),
               num_views=section.get("num_views", 0))

  def config_fields(self) -> dict[str, Any]:
    return {**dict(self.weights), "num_views": self.num_views}


@dataclasses.dataclass(frozen=True)
class ScoreSettings:
  """The quality score S = alpha S_t2i + beta S_i2i and the final pick (paper Eq. 7)."""
  SECTION: ClassVar[str] = "score"
  alpha: float = 2.0
  beta: float = 1.0
  # 0: the best S of all K (the paper); N > 0: the best S among the N candidates
  # with the highest S_t2i (the official code uses 3).
  top_t2i: int = 0

  def __post_init__(self):
    _finite(self.SECTION, "alpha", self.alpha)
    _finite(self.SECTION, "beta", self.beta)
    if abs(self.alpha) + abs(self.beta) > FLOAT32_MAX:   # |S_t2i|, |S_i2i| <= 1
      raise SettingsError(f"config score.alpha and score.beta must keep S = alpha S_t2i + beta "
                          f"S_i2i finite in float32: |alpha| + |beta| <= {FLOAT32_MAX:.2g}, got "
                          f"{self.alpha!r} and {self.beta!r}")
    _int(self.SECTION, "top_t2i", self.top_t2i, 0)


@dataclasses.dataclass(frozen=True)
class OptimSettings:
  """Adam on the RGN."""
  SECTION: ClassVar[str] = "optim"
  learning_rate: float = 3e-3
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8

  def __post_init__(self):
    _finite(self.SECTION, "learning_rate", self.learning_rate, 0.0, strict=True)
    for name in ("b1", "b2"):
      value = getattr(self, name)
      _finite(self.SECTION, name, value, 0.0)
      if value >= 1 or np.float32(value) >= 1:   # 0.999999999 is 1.0 in float32
        _fail(self.SECTION, name, value, "in [0, 1) (also in float32: at most 0.99999994)")
    _finite(self.SECTION, "eps", self.eps, 0.0, strict=True)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """The training loop (host side, never inside jit)."""
  SECTION: ClassVar[str] = "train"
  epochs: int = 5
  batch_size: int = 1
  max_steps: int = dataclasses.field(default=-1, metadata=_RESUMABLE)   # -1: all epochs
  log_every: int = dataclasses.field(default=1, metadata=_RESUMABLE)
  checkpoint_every: int = dataclasses.field(default=10, metadata=_RESUMABLE)
  max_to_keep: int = dataclasses.field(default=3, metadata=_RESUMABLE)

  def __post_init__(self):
    s = self.SECTION
    _int(s, "epochs", self.epochs, 1)
    _int(s, "batch_size", self.batch_size, 1)
    if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or (
        self.max_steps < 0 and self.max_steps != -1):
      _fail(s, "max_steps", self.max_steps, "-1 (all epochs) or an integer >= 0")
    _int(s, "log_every", self.log_every, 1)
    _int(s, "checkpoint_every", self.checkpoint_every, 1)
    _int(s, "max_to_keep", self.max_to_keep, 1)


# Candidate edits one device may hold at once: far more than any editor fits in memory.
MAX_EDITS_PER_DEVICE = 65536


@dataclasses.dataclass(frozen=True)
class InferSettings:
  """Editing defaults (host side; how candidates spread over devices is static in jit)."""
  SECTION: ClassVar[str] = "infer"
  refine_steps: int = dataclasses.field(default=0, metadata=_RESUMABLE)
  # The memory cap: each device edits at most this many candidates at once (at least
  # one box per image it holds), in chunks inside the same jitted call; 0: all at once.
  max_edits_per_device: int = dataclasses.field(default=0, metadata=_RESUMABLE)

  def __post_init__(self):
    _int(self.SECTION, "refine_steps", self.refine_steps, 0)
    _int(self.SECTION, "max_edits_per_device", self.max_edits_per_device, 0,
         MAX_EDITS_PER_DEVICE, "0 means all at once; a cap this large caps nothing")


@dataclasses.dataclass(frozen=True)
class Method:
  """Everything the jitted training step and inference depend on besides the models."""
  region: RegionSettings = RegionSettings()
  rgn: RGNSettings = RGNSettings()
  selection: SelectionSettings = SelectionSettings()
  loss: LossSettings = LossSettings()
  score: ScoreSettings = ScoreSettings()
  optim: OptimSettings = OptimSettings()


SECTIONS = (RegionSettings, RGNSettings, SelectionSettings, LossSettings, ScoreSettings,
            OptimSettings, TrainSettings, InferSettings)


def _section(config, cls) -> dict[str, Any]:
  if cls.SECTION not in config:
    raise SettingsError(f"the config has no section {cls.SECTION!r}")
  return dict(config[cls.SECTION].to_dict() if hasattr(config[cls.SECTION], "to_dict")
              else config[cls.SECTION])


def _build(config, cls):
  values = _section(config, cls)
  if cls is LossSettings:
    return LossSettings.from_section(values)
  names = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(values) - set(names))
  if unknown:
    raise SettingsError(f"config {cls.SECTION} has no field {unknown[0]!r}; fields: "
                        f"{', '.join(names)}")
  values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
  return cls(**values)


def method(config) -> Method:
  """The typed, checked method settings of a config."""
  return Method(*(_build(config, cls) for cls in
                  (RegionSettings, RGNSettings, SelectionSettings, LossSettings,
                   ScoreSettings, OptimSettings)))


def train(config) -> TrainSettings:
  return _build(config, TrainSettings)


def infer(config) -> InferSettings:
  return _build(config, InferSettings)


def check(config) -> None:
  """Builds (and so checks) every section; raises SettingsError on the first bad value."""
  for cls in SECTIONS:
    _build(config, cls)


def _keys(flag: str) -> Iterator[str]:
  for cls in SECTIONS:
    for f in dataclasses.fields(cls):
      if f.metadata.get(flag):
        yield f"{cls.SECTION}.{f.name}"


def rgn_keys() -> tuple[str, ...]:
  """Config keys a trained RGN depends on (besides the editor's and `models`)."""
  return tuple(_keys("rgn"))


def resumable_keys() -> tuple[str, ...]:
  """Config keys that may change when a run resumes (besides the editor's)."""
  return tuple(_keys("resumable"))
