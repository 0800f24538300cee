"""Builds the Flax module a config describes (`config.model`)."""
from __future__ import annotations

import jax.numpy as jnp

from diffusion_jax.models.classifier import NoisyClassifier
from diffusion_jax.models.clip import ClipSpec, NoisedClip
from diffusion_jax.models.evaluator import Evaluator
from diffusion_jax.models.text import TextSpec
from diffusion_jax.models.unet import UNet, attention_ds_of
from diffusion_jax.text import tokenizer as tok_lib

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _common(model_config, image_size: int) -> dict:
  """The UNet fields of `config.model`; attention from pixel resolutions at
  `image_size` (the trained size) to downsampling factors."""
  if model_config.dtype not in _DTYPES:
    raise ValueError(f"model.dtype {model_config.dtype!r}: choose one of {sorted(_DTYPES)}")
  mult = tuple(model_config.channel_mult)
  return dict(
      model_channels=model_config.channels,
      channel_mult=mult,
      num_res_blocks=model_config.num_res_blocks,
      attention_ds=attention_ds_of(model_config.attention_resolutions, image_size, len(mult)),
      num_heads=model_config.num_heads,
      num_head_channels=model_config.num_head_channels,
      dropout=model_config.dropout,
      use_scale_shift_norm=model_config.use_scale_shift_norm,
      resblock_updown=model_config.resblock_updown,
      legacy_attention_order=model_config.get("attention_order", "legacy") == "legacy",
      attention_impl=model_config.get("attention_impl", ""),
      num_groups=model_config.num_groups,
      remat=model_config.remat,
      dtype=_DTYPES[model_config.dtype],
      param_dtype=jnp.float32)


def label_table_size(num_classes: int, null_class: bool) -> int:
  """Rows of the class embedding: the classes, plus the null class for CFG."""
  return num_classes + (1 if null_class else 0)


def make_unet(model_config, image_size: int, image_channels: int,
              label_table: int | None) -> UNet:
  """The denoiser; learned sigma doubles the output channels.

  Args:
    model_config: `config.model`; `inpaint` and `low_res_size` > 0 add
      GLIDE's inpainting and super-resolution inputs.
    image_size: S of the [S, S] images it is trained on.
    image_channels: C of the images.
    label_table: rows of the class embedding (`label_table_size`), or None
      for a model without class labels.
  """
  out = image_channels * (2 if model_config.learn_sigma else 1)
  return UNet(out_channels=out, num_classes=label_table, text=text_spec(model_config),
              inpaint=bool(model_config.get("inpaint", False)),
              super_res=bool(model_config.get("low_res_size", 0)),
              coordinates=bool(model_config.get("coordinates", False)),
              **_common(model_config, image_size))


def text_spec(model_config) -> TextSpec | None:
  """GLIDE's text model of `config.model` (None when `text_ctx` is 0)."""
  if not model_config.get("text_ctx"):
    return None
  if model_config.xf_width % model_config.xf_heads:
    raise ValueError(f"model.xf_width {model_config.xf_width} does not split into "
                     f"{model_config.xf_heads} heads (model.xf_heads)")
  return TextSpec(tok_lib.GPT2_VOCAB, model_config.text_ctx, model_config.xf_width,
                  model_config.xf_layers, model_config.xf_heads,
                  model_config.xf_final_ln, model_config.xf_padding,
                  bool(model_config.get("xf_causal", False)))


def clip_spec(model_config, image_size: int, num_timesteps: int) -> ClipSpec:
  """The noised CLIP of `config.model.clip` for images of `image_size`."""
  c = model_config.clip
  if image_size % c.patch_size:
    raise ValueError(f"model.clip.patch_size {c.patch_size} does not divide the "
                     f"image size {image_size}")
  for tower in ("text", "image"):
    if c[f"{tower}_width"] % c[f"{tower}_heads"]:
      raise ValueError(f"model.clip.{tower}_width does not split into "
                       f"model.clip.{tower}_heads heads")
  return ClipSpec(65536, c.text_ctx, c.text_width, c.text_layers, c.text_heads, image_size,
                  c.patch_size, c.image_width, c.image_layers, c.image_heads, num_timesteps,
                  c.embed_dim)


def make_clip(model_config, image_size: int, num_timesteps: int) -> NoisedClip:
  return NoisedClip(clip_spec(model_config, image_size, num_timesteps))


def make_classifier(model_config, image_size: int, num_classes: int) -> NoisyClassifier:
  return NoisyClassifier(num_classes=num_classes,
                         pool_head_channels=model_config.pool_head_channels,
                         **_common(model_config, image_size))


def make_evaluator(model_config, attributes) -> Evaluator:
  """The clean-image evaluator of `attributes` ((name, values) pairs)."""
  if model_config.dtype not in _DTYPES:
    raise ValueError(f"model.dtype {model_config.dtype!r}: choose one of {sorted(_DTYPES)}")
  return Evaluator(attributes=tuple(attributes), channels=model_config.channels,
                   feature_dim=model_config.feature_dim, num_groups=model_config.num_groups,
                   dtype=_DTYPES[model_config.dtype], param_dtype=jnp.float32)
