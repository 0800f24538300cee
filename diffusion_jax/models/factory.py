"""Builds the Flax module a config describes (`config.model`)."""
from __future__ import annotations

import jax.numpy as jnp

from diffusion_jax.models.classifier import NoisyClassifier
from diffusion_jax.models.evaluator import Evaluator
from diffusion_jax.models.unet import UNet

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _common(model_config) -> dict:
  if model_config.dtype not in _DTYPES:
    raise ValueError(f"model.dtype {model_config.dtype!r}: choose one of {sorted(_DTYPES)}")
  return dict(
      model_channels=model_config.channels,
      channel_mult=tuple(model_config.channel_mult),
      num_res_blocks=model_config.num_res_blocks,
      attention_resolutions=tuple(model_config.attention_resolutions),
      num_heads=model_config.num_heads,
      num_head_channels=model_config.num_head_channels,
      dropout=model_config.dropout,
      use_scale_shift_norm=model_config.use_scale_shift_norm,
      resblock_updown=model_config.resblock_updown,
      num_groups=model_config.num_groups,
      remat=model_config.remat,
      dtype=_DTYPES[model_config.dtype],
      param_dtype=jnp.float32)


def label_table_size(num_classes: int, null_class: bool) -> int:
  """Rows of the class embedding: the classes, plus the null class for CFG."""
  return num_classes + (1 if null_class else 0)


def make_unet(model_config, image_channels: int, label_table: int | None) -> UNet:
  """The denoiser; learned sigma doubles the output channels.

  Args:
    model_config: `config.model`.
    image_channels: C of the images.
    label_table: rows of the class embedding (`label_table_size`), or None
      for a model without class labels.
  """
  out = image_channels * (2 if model_config.learn_sigma else 1)
  return UNet(out_channels=out, num_classes=label_table, **_common(model_config))


def make_classifier(model_config, num_classes: int) -> NoisyClassifier:
  return NoisyClassifier(num_classes=num_classes,
                         pool_head_channels=model_config.pool_head_channels,
                         **_common(model_config))


def make_evaluator(model_config, attributes) -> Evaluator:
  """The clean-image evaluator of `attributes` ((name, values) pairs)."""
  if model_config.dtype not in _DTYPES:
    raise ValueError(f"model.dtype {model_config.dtype!r}: choose one of {sorted(_DTYPES)}")
  return Evaluator(attributes=tuple(attributes), channels=model_config.channels,
                   feature_dim=model_config.feature_dim, num_groups=model_config.num_groups,
                   dtype=_DTYPES[model_config.dtype], param_dtype=jnp.float32)
