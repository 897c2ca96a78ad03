"""The static bundle of frozen modules the method's jitted steps take: DINO, CLIP and the
editor (built by `lr_jax.models`; parameters travel apart, in the `frozen` tree). The RGN
is made from the method's settings (`step.rgn_network`); its parameters are the state."""
from __future__ import annotations

import dataclasses

from lr_jax.editors.base import Editor
from lr_jax.encoders.clip import CLIP
from lr_jax.encoders.vit import ViT


@dataclasses.dataclass(frozen=True, eq=False)
class Models:
  """Modules and static facts; parameters live in a separate `frozen` pytree."""
  dino: ViT
  clip: CLIP
  editor: Editor

  @property
  def dino_dim(self) -> int:
    return self.dino.config.hidden_size

  @property
  def clip_image_size(self) -> int:
    return self.clip.config.vision.image_size
