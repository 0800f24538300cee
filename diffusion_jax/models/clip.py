"""GLIDE's noised CLIP: a text encoder and an image encoder that takes x_t and t.

The same functions as glide-text2im's `clip/encoders.py`, whose parameters
keep their PyTorch names and layouts here (`blocks.block_0.f_attn.f_q.w`,
linear weights [out, in]), so a `state_dict` imports key for key
(`convert.from_torch_verbatim`).

- Both encoders are pre-norm transformers (LayerNorm eps 1e-5, exact GELU);
  attention splits the width into contiguous per-head chunks and scales q and
  k by head_dim^(-1/4) each; the key projection has no bias.
- `TextEncoder(tokens, lens)`: token plus position embeddings, causal
  attention, the output at the end token (`lens - 1`), LayerNorm, projection.
- `ImageEncoder(x, t)`: x in [-1, 1] taken to [0, 255] and normalised by
  CLIP's channel statistics, cut into patches by a bias-free strided conv, a
  learned token per timestep prepended, positions added, LayerNorm, the
  blocks, then the timestep token's output, LayerNorm, projection.
- The guidance logit is exp(logit_scale) times the dot product of the
  normalised embeddings (`normalize`), logit_scale = log(100).
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

LOGIT_SCALE = math.log(100.0)
# CLIP's image statistics, per RGB channel, on [0, 255].
CHANNEL_MEANS = (122.77093945, 116.74601272, 104.09373519)
CHANNEL_STDS = (68.50053285, 66.63215831, 70.32316309)
_MASKED = -1e10  # the reference's attention bias where masked


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """The noised CLIP's size (GLIDE's clip/config.yaml, at any scale).

  Attributes:
    vocab_size: rows of the token embedding (65536; the BPE uses 49408).
    text_ctx: tokens per prompt, start and end included.
    text_width, text_layers, text_heads: the text transformer.
    image_size, patch_size: of the images, in pixels.
    image_width, image_layers, image_heads: the image transformer.
    num_timesteps: rows of the timestep embedding.
    embed_dim: the shared embedding.
  """
  vocab_size: int = 65536
  text_ctx: int = 77
  text_width: int = 512
  text_layers: int = 12
  text_heads: int = 8
  image_size: int = 64
  patch_size: int = 4
  image_width: int = 768
  image_layers: int = 12
  image_heads: int = 12
  num_timesteps: int = 1000
  embed_dim: int = 512


def _normal(std):
  return nn.initializers.normal(std)


class LayerNorm(nn.Module):
  """`g` and `b` [n], eps 1e-5, in float32."""

  @nn.compact
  def __call__(self, x):
    n = x.shape[-1]
    g = self.param("g", nn.initializers.ones, (n,))
    b = self.param("b", nn.initializers.zeros, (n,))
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # float32, or float64
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * g + b


class Affine(nn.Module):
  """x @ w.T + b with `w` [out, in] (torch's layout), `b` optional."""
  features: int
  use_bias: bool = True
  init_scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    w = self.param("w", _normal(self.init_scale / math.sqrt(x.shape[-1])),
                   (self.features, x.shape[-1]))
    y = x @ w.T
    if self.use_bias:
      y = y + self.param("b", nn.initializers.zeros, (self.features,))
    return y


class Attention(nn.Module):
  """Multi-head attention under an additive mask bias [L, L] (0 or -1e10)."""
  heads: int

  @nn.compact
  def __call__(self, x, bias):  # [B, L, W], [L, L] -> [B, L, W]
    batch, length, width = x.shape
    h = LayerNorm(name="ln")(x)
    q = Affine(width, name="f_q")(h)
    k = Affine(width, use_bias=False, name="f_k")(h)
    v = Affine(width, name="f_v")(h)
    head_dim = width // self.heads
    split = lambda a: a.reshape(batch, length, self.heads, head_dim)  # noqa: E731
    scale = head_dim ** -0.25
    logits = jnp.einsum("bqhd,bkhd->bhqk", split(q) * scale, split(k) * scale)
    weights = jax.nn.softmax(logits + bias, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, split(v)).reshape(batch, length, width)
    return x + Affine(width, name="f_c")(out)


class MLP(nn.Module):
  """x + f_2(gelu(f_1(ln(x)))), hidden width 4 x width, exact GELU."""

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    h = Affine(4 * width, name="f_1")(LayerNorm(name="ln")(x))
    return x + Affine(width, name="f_2")(nn.gelu(h, approximate=False))


class Block(nn.Module):
  """One residual block: attention (`f_attn`), then the MLP (`f_mlp`)."""
  heads: int

  @nn.compact
  def __call__(self, x, bias):
    return MLP(name="f_mlp")(Attention(self.heads, name="f_attn")(x, bias))


def _run_blocks(x, bias, layers: int, heads: int):
  """The residual blocks `block_0`, ... (call inside the "blocks" module)."""
  for i in range(layers):
    x = Block(heads, name=f"block_{i}")(x, bias)
  return x


class _TextInput(nn.Module):
  """`blocks.input` of the text tower: token plus position embeddings."""
  spec: ClipSpec

  @nn.compact
  def __call__(self, tokens):  # [B, L] int -> [B, L, W]
    spec = self.spec
    voc = self.param("w_voc", _normal(0.02), (spec.vocab_size, spec.text_width))
    pos = self.param("w_pos", _normal(0.01), (spec.text_ctx, spec.text_width))
    return voc[tokens] + pos[None]


class _ImageInput(nn.Module):
  """`blocks.input` of the image tower: normalised pixels cut into patches,
  the timestep's token first, positions added, LayerNorm."""
  spec: ClipSpec

  @nn.compact
  def __call__(self, x, t):  # [B, S, S, 3] in [-1, 1], [B] int -> [B, 1 + N, W]
    spec, patch = self.spec, self.spec.patch_size
    dtype = jnp.promote_types(x.dtype, jnp.float32)  # float32, or float64
    pixels = (x.astype(dtype) + 1) * 127.5
    pixels = (pixels - jnp.asarray(CHANNEL_MEANS, dtype)) / jnp.asarray(CHANNEL_STDS, dtype)
    proj = self.param("patch_proj", _normal(1.0 / (3 * patch)),
                      (spec.image_width, 3, patch, patch))
    patches = jax.lax.conv_general_dilated(pixels, proj.astype(dtype), (patch, patch), "VALID",
                                           dimension_numbers=("NHWC", "OIHW", "NHWC"))
    patches = patches.reshape(x.shape[0], -1, spec.image_width)  # [B, N, W], row-major
    w_t = self.param("w_t", _normal(0.02), (spec.num_timesteps, spec.image_width))
    pos = self.param("w_pos", _normal(0.01), (1 + patches.shape[1], spec.image_width))
    h = jnp.concatenate([w_t[t][:, None], patches], axis=1) + pos[None]
    return LayerNorm(name="ln")(h)


class _TextBlocks(nn.Module):
  spec: ClipSpec

  @nn.compact
  def __call__(self, tokens, lens):  # [B, L] int, [B] int -> [B, embed_dim]
    spec, length = self.spec, tokens.shape[1]
    h = _TextInput(spec, name="input")(tokens)
    causal = jnp.tril(jnp.ones((length, length), bool))
    h = _run_blocks(h, jnp.where(causal, 0.0, _MASKED), spec.text_layers, spec.text_heads)
    pooled = jnp.take_along_axis(h, (lens - 1)[:, None, None], axis=1)[:, 0]  # end token
    return _Output(spec.embed_dim, name="output")(pooled)


class _ImageBlocks(nn.Module):
  spec: ClipSpec

  @nn.compact
  def __call__(self, x, t):  # [B, S, S, 3], [B] -> [B, embed_dim]
    spec = self.spec
    h = _ImageInput(spec, name="input")(x, t)
    h = _run_blocks(h, jnp.zeros((), jnp.float32), spec.image_layers, spec.image_heads)
    return _Output(spec.embed_dim, name="output")(h[:, 0])  # the timestep token


class _Output(nn.Module):
  """`blocks.output`: LayerNorm, then a bias-free projection `f`."""
  features: int

  @nn.compact
  def __call__(self, h):
    return Affine(self.features, use_bias=False, name="f")(LayerNorm(name="ln")(h))


class TextEncoder(nn.Module):
  """The noised CLIP's text tower: tokens, lens -> z_text [B, embed_dim] (unnormalised)."""
  spec: ClipSpec

  @nn.compact
  def __call__(self, tokens, lens):
    if tokens.ndim != 2 or tokens.shape[1] != self.spec.text_ctx:
      raise ValueError(f"the CLIP text encoder takes tokens [B, {self.spec.text_ctx}]; "
                       f"got {tuple(tokens.shape)}")
    return _TextBlocks(self.spec, name="blocks")(tokens, lens)


class ImageEncoder(nn.Module):
  """The noised CLIP's image tower: x_t in [-1, 1], t -> z_image [B, embed_dim]."""
  spec: ClipSpec

  @nn.compact
  def __call__(self, x, t):
    size = self.spec.image_size
    if x.ndim != 4 or x.shape[1:] != (size, size, 3):
      raise ValueError(f"the CLIP image encoder takes [B, {size}, {size}, 3] images; "
                       f"got {tuple(x.shape)}")
    return _ImageBlocks(self.spec, name="blocks")(x, t)


def normalize(z):
  """z / (|z| + 1e-12), along the last axis (the reference's form)."""
  return z / (jnp.linalg.norm(z, axis=-1, keepdims=True) + 1e-12)


class NoisedClip(nn.Module):
  """Both towers (`text`, `image`): x_t, t, tokens, lens -> (z_image, z_text),
  unnormalised. Each tower also runs on its own parameters:
  `TextEncoder(spec).apply({"params": params["text"]}, tokens, lens)`."""
  spec: ClipSpec

  @nn.compact
  def __call__(self, x, t, *, clip_tokens, clip_lens):
    z_image = ImageEncoder(self.spec, name="image")(x, t)
    return z_image, TextEncoder(self.spec, name="text")(clip_tokens, clip_lens)


def text_embeddings(spec: ClipSpec, params, tokens, lens):
  """Normalised text embeddings [B, D] from a `NoisedClip`'s params."""
  return normalize(TextEncoder(spec).apply({"params": params["text"]}, tokens, lens))


def image_embeddings(spec: ClipSpec, params, x, t):
  """Normalised image embeddings [B, D] of x_t at timesteps t."""
  return normalize(ImageEncoder(spec).apply({"params": params["image"]}, x, t))
