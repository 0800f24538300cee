"""The ADM UNet (guided-diffusion's `UNetModel`) in Flax Linen.

The same function as the reference: a checkpoint of `UNetModel`,
`SuperResModel` or GLIDE's `Text2ImUNet`, `InpaintText2ImUNet`,
`SuperResText2ImUNet` and `InpaintSuperResText2ImUNet` maps onto these
parameters by `models/convert.py`. Class labels (with an optional null class
for classifier-free guidance), text, a low-resolution image (`super_res`:
upsampled bilinearly and concatenated) and a known image and mask
(`inpaint`: image * mask and the mask concatenated) are keyword arguments.

Attention sits at downsampling factors (`attention_ds`: 1 is full
resolution, 2 half), as in guided-diffusion, not at feature-map sizes: the
same weights on a larger canvas (outpainting) keep their architecture.
Configs give pixel resolutions at the trained image size, converted once by
`attention_ds_of`.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models import layers
from diffusion_jax.models.text import TextEncoder, TextSpec

Dtype = Any


class UNetSpec(nn.Module):
  """Fields shared by the UNet and the classifier's encoder (no __call__)."""
  model_channels: int = 128
  num_res_blocks: int = 2
  attention_ds: Sequence[int] = (2, 4)  # downsampling factors (1: full resolution)
  channel_mult: Sequence[int] = (1, 2, 2, 2)
  dropout: float = 0.0
  num_heads: int = 4
  num_head_channels: int = -1  # when > 0, overrides num_heads
  use_scale_shift_norm: bool = True
  resblock_updown: bool = True
  conv_resample: bool = True
  legacy_attention_order: bool = True
  attention_impl: str = ""  # layers.ATTENTION_IMPLS: "" ours, "xla", "cudnn"
  num_groups: int = 32
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def time_embed_dim(self) -> int:
    return 4 * self.model_channels

  def heads(self, channels: int) -> int:
    return channels // self.num_head_channels if self.num_head_channels > 0 else self.num_heads

  def check_input(self, x):
    factor = 2 ** (len(self.channel_mult) - 1)
    if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(
          f"the UNet needs [B, H, W, C] images with H and W divisible by {factor} "
          f"({len(self.channel_mult)} levels); got shape {tuple(x.shape)}")

  def res_block(self, name, out_channels, train, up=False, down=False):
    block = nn.remat(layers.ResBlock) if self.remat else layers.ResBlock
    return block(out_channels, self.dropout, self.use_scale_shift_norm, up=up, down=down,
                 num_groups=self.num_groups, deterministic=not train, dtype=self.dtype,
                 param_dtype=self.param_dtype, name=name)

  def attention(self, name, channels):
    return layers.AttentionBlock(self.heads(channels), self.legacy_attention_order,
                                 self.num_groups, self.dtype, self.param_dtype,
                                 self.attention_impl, name=name)

  def time_embedding(self, t):
    """[B] original timesteps -> [B, 4 * model_channels]."""
    emb = layers.timestep_embedding(t, self.model_channels).astype(self.dtype)
    dense = lambda name: nn.Dense(self.time_embed_dim, dtype=self.dtype,  # noqa: E731
                                  param_dtype=self.param_dtype, name=name)
    return dense("time_embed_2")(nn.silu(dense("time_embed_0")(emb)))

  def encode(self, x, emb, train, encoder_out=None):
    """The input blocks: (h, the skip activations the output blocks take).

    `encoder_out` [B, L, E] is the text model's input (GLIDE): the text
    transformer's output sequence, whose keys and values every attention
    layer prepends to its own. None for models without text.
    """
    ch = int(self.channel_mult[0] * self.model_channels)
    h = layers._conv(ch, "input_blocks_0_0", self.dtype, self.param_dtype)(x.astype(self.dtype))
    skips, index = [h], 1
    for level, mult in enumerate(self.channel_mult):
      for _ in range(self.num_res_blocks):
        ch = int(mult * self.model_channels)
        h = self.res_block(f"input_blocks_{index}_0", ch, train)(h, emb)
        if 2 ** level in self.attention_ds:
          h = self.attention(f"input_blocks_{index}_1", ch)(h, encoder_out)
        skips.append(h)
        index += 1
      if level != len(self.channel_mult) - 1:
        name = f"input_blocks_{index}_0"
        if self.resblock_updown:
          h = self.res_block(name, ch, train, down=True)(h, emb)
        else:
          h = layers.Downsample(self.conv_resample, ch, self.dtype, self.param_dtype,
                                name=name)(h)
        skips.append(h)
        index += 1
    return h, skips

  def middle(self, h, emb, train, encoder_out=None):
    """The middle block; `encoder_out` as in `encode`."""
    ch = h.shape[-1]
    h = self.res_block("middle_block_0", ch, train)(h, emb)
    h = self.attention("middle_block_1", ch)(h, encoder_out)
    return self.res_block("middle_block_2", ch, train)(h, emb)


class UNet(UNetSpec):
  """ADM UNet: predicts eps (and, with `learn_sigma`, the variance interpolation).

  Attributes (beyond `UNetSpec`):
    out_channels: output channels (2 x image channels for a learned sigma).
    num_classes: size of the class embedding table, or None for no classes.
      Add one row for a null class when training for classifier-free guidance.
    text: GLIDE's text model (`Text2ImUNet`), or None for no text. Its output
      at the last slot is added to the timestep embedding, and its output
      sequence is given to every attention layer.
    inpaint: takes a known image and mask (GLIDE's `InpaintText2ImUNet`):
      image * mask and the mask are concatenated to x; either defaults to
      zeros (nothing known: plain generation).
    super_res: takes a low-resolution image (`SuperResModel`,
      `SuperResText2ImUNet`), upsampled bilinearly and concatenated.
    coordinates: two more input channels, each pixel's row and column in
      [-1, 1] (`coordinate_channels`, CoordConv): absolute position.
  """
  out_channels: int = 3
  num_classes: Optional[int] = None
  text: Optional[TextSpec] = None
  inpaint: bool = False
  super_res: bool = False
  coordinates: bool = False

  def text_encoder(self) -> TextEncoder:
    """The (unbound) text model; its parameters are this UNet's "text"."""
    if self.text is None:
      raise ValueError("this UNet has no text model")
    return self._text_module(parent=None)

  def _text_module(self, **kwargs) -> TextEncoder:
    return TextEncoder(self.text, self.time_embed_dim, self.dtype, self.param_dtype, **kwargs)

  def encode_text(self, params, tokens, mask):
    """(xf_proj [B, 4 * model_channels], xf_out [B, L, W]) of tokens and mask
    [B, L], from this UNet's `params`: computed once per sample call, then
    passed to every step as `xf_proj=`, `xf_out=`."""
    return self.text_encoder().apply({"params": params["text"]}, tokens, mask)

  @nn.compact
  def __call__(self, x, t, *, y=None, tokens=None, mask=None, xf_proj=None, xf_out=None,
               low_res=None, inpaint_image=None, inpaint_mask=None, train: bool = False):
    """Args:
      x: [B, H, W, C] noisy images x_t.
      t: [B] original (unrespaced) timesteps.
      y: [B] int class labels (needed iff `num_classes`).
      tokens, mask: [B, L] int token ids and bool (False on padding), for a
        text model; or instead
      xf_proj, xf_out: the text model's output for them (`encode_text`).
      low_res: [B, h, w, C] low-resolution images (needed iff `super_res`).
      inpaint_image: [B, H, W, C] known images (`inpaint`; default zeros);
        only the pixels the mask keeps matter.
      inpaint_mask: [B, H, W, 1] 1 where known (`inpaint`; default zeros).
      train: enables dropout (needs a "dropout" rng).

    Returns:
      [B, H, W, out_channels] float32.
    """
    self.check_input(x)
    x = self._concat_inputs(x, low_res, inpaint_image, inpaint_mask)
    emb = self.time_embedding(t)
    if (y is None) != (self.num_classes is None):
      raise ValueError("class labels y must be given exactly when num_classes is set "
                       f"(num_classes={self.num_classes}, y given: {y is not None})")
    if y is not None:
      emb = emb + nn.Embed(self.num_classes, self.time_embed_dim, dtype=self.dtype,
                           param_dtype=self.param_dtype, name="label_emb")(y)
    xf_proj, xf_out = self._text(tokens, mask, xf_proj, xf_out)
    if xf_proj is not None:
      emb = emb + xf_proj.astype(emb.dtype)
    h, skips = self.encode(x, emb, train, xf_out)
    h = self.middle(h, emb, train, xf_out)
    h = self.decode(h, skips, emb, train, xf_out)
    h = nn.silu(layers.group_norm(h, "out_0", self.num_groups, self.dtype,
                                  self.param_dtype))
    out = layers._conv(self.out_channels, "out_2", self.dtype, self.param_dtype,
                       zero=True)(h)
    return out.astype(jnp.float32)

  def _text(self, tokens, mask, xf_proj, xf_out):
    """(xf_proj, xf_out): given, computed from tokens, or (None, None) without text."""
    encoded = xf_proj is not None and xf_out is not None
    if self.text is None:
      if tokens is not None or encoded:
        raise ValueError("this UNet has no text model, but was given text")
      return None, None
    if encoded:
      return xf_proj, xf_out
    if tokens is None or mask is None:
      raise ValueError("a text-conditional UNet needs tokens and mask (or xf_proj and xf_out)")
    return self._text_module(name="text")(tokens, mask)

  def _concat_inputs(self, x, low_res, inpaint_image, inpaint_mask):
    """GLIDE's input: [x, image * mask, mask, upsampled low_res] on channels,
    then the row and column channels where `coordinates` is set."""
    if not self.inpaint and (inpaint_image is not None or inpaint_mask is not None):
      raise ValueError("this UNet takes no inpainting inputs (inpaint=False)")
    if (low_res is not None) != self.super_res:
      raise ValueError("a low-resolution image low_res must be given exactly when "
                       f"super_res is set (super_res={self.super_res})")
    parts = [x]
    if self.inpaint:
      if inpaint_image is None:
        inpaint_image = jnp.zeros_like(x)
      if inpaint_mask is None:
        inpaint_mask = jnp.zeros(x.shape[:3] + (1,), x.dtype)
      if inpaint_mask.shape != x.shape[:3] + (1,):
        raise ValueError(f"inpaint_mask must be [B, H, W, 1] = {x.shape[:3] + (1,)}, "
                         f"got {tuple(inpaint_mask.shape)}")
      parts += [inpaint_image * inpaint_mask, inpaint_mask]
    if self.super_res:
      size = x.shape[:3] + low_res.shape[3:]
      parts.append(jax.image.resize(low_res.astype(jnp.float32), size, "bilinear"))
    if self.coordinates:
      parts.append(coordinate_channels(x.shape))
    return jnp.concatenate([p.astype(x.dtype) for p in parts], axis=-1)

  def decode(self, h, skips, emb, train, encoder_out=None):
    """The output blocks, taking the skips in reverse; `encoder_out` as in `encode`."""
    index = 0
    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for i in range(self.num_res_blocks + 1):
        ch = int(self.model_channels * mult)
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = self.res_block(f"output_blocks_{index}_0", ch, train)(h, emb)
        sub = 1
        if 2 ** level in self.attention_ds:
          h = self.attention(f"output_blocks_{index}_1", ch)(h, encoder_out)
          sub = 2
        if level and i == self.num_res_blocks:
          name = f"output_blocks_{index}_{sub}"
          if self.resblock_updown:
            h = self.res_block(name, ch, train, up=True)(h, emb)
          else:
            h = layers.Upsample(self.conv_resample, ch, self.dtype, self.param_dtype,
                                name=name)(h)
        index += 1
    return h


def attention_ds_of(resolutions: Sequence[int], image_size: int,
                    num_levels: int) -> tuple[int, ...]:
  """Downsampling factors of attention given as feature-map sizes in pixels
  at `image_size` (guided-diffusion's `attention_resolutions` flag).

  Raises:
    ValueError: a size that is no level's feature map.
  """
  factor = 2 ** (num_levels - 1)
  if image_size % factor:
    raise ValueError(f"the UNet needs images with H and W divisible by {factor} "
                     f"({num_levels} levels); got {image_size}x{image_size}")
  sizes = {image_size // 2 ** level: 2 ** level for level in range(num_levels)}
  unknown = [r for r in resolutions if int(r) not in sizes]
  if unknown:
    raise ValueError(f"model.attention_resolutions {tuple(resolutions)}: {unknown[0]} is "
                     f"no feature-map size of a {image_size}x{image_size} UNet with "
                     f"{num_levels} levels ({', '.join(map(str, sorted(sizes, reverse=True)))})")
  return tuple(sorted(sizes[int(r)] for r in resolutions))


def coordinate_channels(shape) -> jax.Array:
  """[B, H, W, 2] each pixel's row and column, from -1 (top, left) to 1
  (bottom, right) through the pixel centers."""
  batch, height, width = shape[:3]
  rows = (jnp.arange(height) + 0.5) / height * 2 - 1  # [H]
  cols = (jnp.arange(width) + 0.5) / width * 2 - 1  # [W]
  grid = jnp.stack(jnp.meshgrid(rows, cols, indexing="ij"), axis=-1)  # [H, W, 2]
  return jnp.broadcast_to(grid, (batch, height, width, 2))
