"""The clean-image evaluator: a small CNN that names every attribute of an image.

It judges samples (accuracy of the class asked for, spread of the attributes
left free, distances in its feature space), and is never the classifier that
guided them: it sees clean images only, not x_t. Levels of two 3x3
convolutions (GroupNorm, SiLU) halve the image down to 4x4; the 4x4 map is
flattened, so position stays visible, into a `feature_dim` feature vector,
from which one linear head per attribute gives its logits.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models import layers

FEATURES = "features"  # the output key of the penultimate feature vector


class Evaluator(nn.Module):
  """Logits of each attribute, and features, of clean images.

  Attributes:
    attributes: ((name, number of values), ...), one head each.
    channels: width of the first level (doubled at each level below, up to
      `max_channels`).
    max_channels: the widest level.
    feature_dim: size of the feature vector.
    num_groups: GroupNorm groups.
    dtype, param_dtype: compute and parameter dtypes.
  """
  attributes: Sequence[tuple[str, int]]
  channels: int = 32
  max_channels: int = 128
  feature_dim: int = 128
  num_groups: int = 8
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, t=None, *, train: bool = False) -> dict[str, jax.Array]:
    """[B, S, S, C] images in [-1, 1] -> {name: logits [B, K], FEATURES: [B, F]}.

    `t` is ignored (the evaluator sees clean images); it is accepted so the
    evaluator is called like the other networks.
    """
    del t, train
    if x.ndim != 4 or x.shape[1] != x.shape[2] or x.shape[1] < 4 or x.shape[1] & (x.shape[1] - 1):
      raise ValueError(f"the evaluator needs square [B, S, S, C] images with S a power of "
                       f"two >= 4; got shape {tuple(x.shape)}")
    h, width, level = x.astype(self.dtype), self.channels, 0
    while True:
      for i in range(2):
        h = layers._conv(width, f"level_{level}_conv_{i}", self.dtype, self.param_dtype)(h)
        h = nn.silu(layers.group_norm(h, f"level_{level}_norm_{i}", self.num_groups,
                                      self.dtype, self.param_dtype))
      if h.shape[1] == 4:
        break
      h = layers.downsample_average(h)
      width, level = min(2 * width, self.max_channels), level + 1
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=self.param_dtype,  # noqa: E731
                                     name=name)
    features = nn.silu(dense(self.feature_dim, "features")(h.reshape(h.shape[0], -1)))
    out = {name: dense(count, f"head_{name}")(features).astype(jnp.float32)
           for name, count in self.attributes}
    out[FEATURES] = features.astype(jnp.float32)
    return out
