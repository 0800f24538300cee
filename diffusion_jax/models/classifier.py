"""The noisy-image classifier: the UNet's encoder half and attention pooling
(guided-diffusion's `EncoderUNetModel` with pool="attention")."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.models import layers
from diffusion_jax.models.unet import UNetSpec


class NoisyClassifier(UNetSpec):
  """Logits p(y | x_t, t) of a classifier trained on noised images.

  Attributes (beyond `UNetSpec`):
    num_classes: number of logits.
    pool_head_channels: channels per head of the attention pooling (ADM uses
      the encoder's `num_head_channels`, 64 at full size).
  """
  num_classes: int = 10
  pool_head_channels: int = 64

  @nn.compact
  def __call__(self, x, t, *, train: bool = False, **unused_cond):
    """[B, H, W, C] noisy images at original timesteps [B] -> logits [B, K]."""
    self.check_input(x)
    emb = self.time_embedding(t)
    h, _ = self.encode(x, emb, train)
    h = self.middle(h, emb, train)
    h = nn.silu(layers.group_norm(h, "out_0", self.num_groups, self.dtype,
                                  self.param_dtype))
    logits = layers.AttentionPool2d(self.pool_head_channels, self.num_classes,
                                    self.dtype, self.param_dtype, name="out_2")(h)
    return logits.astype(jnp.float32)
