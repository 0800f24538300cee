"""Building blocks of the ADM UNet, as the same functions as guided-diffusion's.

Submodule names mirror the PyTorch `state_dict` keys of openai/guided-diffusion
and glide-text2im (`in_layers_2` for `in_layers.2`), so that released
checkpoints import by a mechanical rule (`models/convert.py`). Arrays are
NHWC; computation runs in `dtype`, parameters are stored in `param_dtype`,
normalisation and softmax run in float32.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
zeros = nn.initializers.zeros


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding [B, dim] of (original, unrespaced) timesteps [B].

  cos of t * f_i in the first half, sin in the second, f_i = max_period^(-i/half).
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def _group_sum(v, num_groups):
  """[B, L, C] -> [B, G]: the sum over L and each group's channels.

  Summing over L first (one contiguous pass) and then over the few channels of
  each group is several times faster on the CPU than one reduction over the
  two strided axes of [B, L, G, C/G].
  """
  batch, _, channels = v.shape
  return jnp.sum(jnp.sum(v, axis=1).reshape(batch, num_groups, channels // num_groups), -1)


def _per_channel(v, channels):
  """[B, G] -> [B, 1, C]: each group's value repeated over its channels."""
  return jnp.repeat(v, channels // v.shape[-1], axis=-1)[:, None, :]


def _group_stats(x, num_groups, eps):
  """Mean and 1 / std of each group, as [B, 1, C]; two passes (x - mean)."""
  _, length, channels = x.shape
  count = length * (channels // num_groups)
  mean = _per_channel(_group_sum(x, num_groups) / count, channels)
  var = _group_sum(jnp.square(x - mean), num_groups) / count
  return mean, _per_channel(jax.lax.rsqrt(var + eps), channels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm_fn(x, scale, bias, num_groups, eps):
  """GroupNorm of x [B, L, C] (float32) with per-channel scale and bias [C].

  The same function as `nn.GroupNorm(use_fast_variance=False)`, with a
  hand-written backward pass: two per-channel sums over L and one
  elementwise pass, where autodiff emits several strided group reductions.
  """
  return _group_norm_fwd(x, scale, bias, num_groups, eps)[0]


def _group_norm_fwd(x, scale, bias, num_groups, eps):
  mean, rstd = _group_stats(x, num_groups, eps)
  return (x - mean) * (rstd * scale) + bias, (x, scale, mean, rstd)


def _group_norm_bwd(num_groups, eps, residuals, grad):
  del eps
  x, scale, mean, rstd = residuals
  _, length, channels = x.shape
  xhat = (x - mean) * rstd  # [B, L, C]
  sum_g, sum_gx = jnp.sum(grad, axis=1), jnp.sum(grad * xhat, axis=1)  # [B, C]
  count = length * (channels // num_groups)
  group_mean = lambda v: _per_channel(  # noqa: E731
      _group_sum((v * scale)[:, None], num_groups) / count, channels)
  dx = rstd * (grad * scale - group_mean(sum_g) - xhat * group_mean(sum_gx))
  return dx, jnp.sum(sum_gx, axis=0), jnp.sum(sum_g, axis=0)


group_norm_fn.defvjp(_group_norm_fwd, _group_norm_bwd)


class GroupNorm(nn.Module):
  """GroupNorm over NHWC (or [B, L, C]) arrays in float32, eps 1e-5 as torch.

  Parameters `scale` and `bias` [C], as `nn.GroupNorm`'s; returns float32.
  """
  num_groups: int = 32
  epsilon: float = 1e-5
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (channels,), self.param_dtype)
    bias = self.param("bias", zeros, (channels,), self.param_dtype)
    flat = x.astype(jnp.float32).reshape(x.shape[0], -1, channels)  # [B, L, C]
    out = group_norm_fn(flat, scale.astype(jnp.float32), bias.astype(jnp.float32),
                        self.num_groups, self.epsilon)
    return out.reshape(x.shape)


def group_norm(x, name, num_groups=32, dtype=jnp.float32, param_dtype=jnp.float32):
  """GroupNorm computed in float32 (eps 1e-5, as torch), cast back to `dtype`.

  Call inside a compact method: the norm's parameters belong to the caller.
  """
  channels = x.shape[-1]
  if channels % num_groups:
    raise ValueError(f"GroupNorm: {channels} channels do not split into "
                     f"{num_groups} groups (choose channels divisible by it)")
  norm = GroupNorm(num_groups=num_groups, param_dtype=param_dtype, name=name)
  return norm(x).astype(dtype)


def _conv(features, name, dtype, param_dtype, kernel=3, stride=1, zero=False):
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), dtype=dtype,
                 param_dtype=param_dtype, name=name,
                 **({"kernel_init": zeros} if zero else {}))


def upsample_nearest(x):
  """[B, H, W, C] -> [B, 2H, 2W, C], nearest neighbour."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def downsample_average(x):
  """[B, H, W, C] -> [B, H/2, W/2, C], 2x2 average pooling."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Downsample(nn.Module):
  """Halves H and W: a stride-2 3x3 conv (`op`) or average pooling."""
  use_conv: bool
  out_channels: Optional[int] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if not self.use_conv:
      return downsample_average(x)
    return _conv(self.out_channels or x.shape[-1], "op", self.dtype, self.param_dtype,
                 stride=2)(x)


class Upsample(nn.Module):
  """Doubles H and W by nearest neighbour, then optionally a 3x3 conv (`conv`)."""
  use_conv: bool
  out_channels: Optional[int] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = upsample_nearest(x)
    if not self.use_conv:
      return x
    return _conv(self.out_channels or x.shape[-1], "conv", self.dtype, self.param_dtype)(x)


class ResBlock(nn.Module):
  """ADM residual block: GroupNorm, SiLU, conv; timestep embedding as a bias or
  a scale-shift of the second norm; optional 2x up/down sampling inside."""
  out_channels: int
  dropout: float = 0.0
  use_scale_shift_norm: bool = True
  up: bool = False
  down: bool = False
  use_conv_skip: bool = False
  num_groups: int = 32
  deterministic: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb):  # x: [B, H, W, C], emb: [B, E]
    conv = lambda f, name, **kw: _conv(f, name, self.dtype, self.param_dtype, **kw)  # noqa: E731
    norm = lambda h, name: group_norm(h, name, self.num_groups, self.dtype,  # noqa: E731
                                      self.param_dtype)
    h = nn.silu(norm(x, "in_layers_0"))
    if self.up:
      h, x = upsample_nearest(h), upsample_nearest(x)
    elif self.down:
      h, x = downsample_average(h), downsample_average(x)
    h = conv(self.out_channels, "in_layers_2")(h)
    emb_width = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
    emb_out = nn.Dense(emb_width, dtype=self.dtype, param_dtype=self.param_dtype,
                       name="emb_layers_1")(nn.silu(emb))[:, None, None, :]
    if self.use_scale_shift_norm:
      scale, shift = jnp.split(emb_out, 2, axis=-1)
      h = norm(h, "out_layers_0") * (1 + scale) + shift
    else:
      h = norm(h + emb_out, "out_layers_0")
    h = nn.Dropout(self.dropout, deterministic=self.deterministic)(nn.silu(h))
    h = conv(self.out_channels, "out_layers_3", zero=True)(h)
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, "skip_connection",
               kernel=3 if self.use_conv_skip else 1)(x)
    return x + h


# Attention implementations: ours ("", below), or `jax.nn.dot_product_attention`
# with "xla" or "cudnn" (a fused flash-attention kernel on NVIDIA GPUs, for
# bfloat16 and float16 inputs), the same function up to rounding.
ATTENTION_IMPLS = ("", "xla", "cudnn")


def dot_product_attention(q, k, v, implementation: str = "", causal: bool = False):
  """softmax(q k^T / sqrt(d)) v in float32 logits; q [B, Lq, H, D], k/v [B, Lk, H, D].

  Ours is computed head-major ([B, H, L, D]): on the CPU the two batched
  matmuls run several times faster in that layout than on [B, L, H, D]
  operands. `implementation` "xla" or "cudnn" hands it to
  `jax.nn.dot_product_attention` instead. `causal`: query i attends to keys
  0 ... i only (self-attention, Lq = Lk).
  """
  if implementation:
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation,
                                        is_causal=causal)
  scale = q.shape[-1] ** -0.25  # applied to q and k alike, as guided-diffusion
  q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))  # [B, H, L, D]
  logits = jnp.einsum("bhqd,bhkd->bhqk", q * scale, k * scale,
                      preferred_element_type=jnp.float32)
  if causal:
    allowed = jnp.tril(jnp.ones(logits.shape[-2:], bool))  # [Lq, Lk]
    logits = jnp.where(allowed, logits, jnp.finfo(logits.dtype).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", weights, v), 1, 2)


def split_heads(qkv, num_heads, parts, legacy_order):
  """[B, L, parts * C] -> `parts` arrays [B, L, heads, C / heads].

  Legacy order (guided-diffusion's QKVAttentionLegacy, GLIDE): channels are
  grouped by head, then by q/k/v; the new order groups by q/k/v first.
  """
  batch, length, width = qkv.shape
  head_dim = width // (parts * num_heads)
  if legacy_order:
    qkv = qkv.reshape(batch, length, num_heads, parts, head_dim)
    return [qkv[:, :, :, i] for i in range(parts)]
  qkv = qkv.reshape(batch, length, parts, num_heads, head_dim)
  return [qkv[:, :, i] for i in range(parts)]


class AttentionBlock(nn.Module):
  """Self-attention over all positions, with a residual; optionally the keys
  and values of an encoder sequence (GLIDE's text) prepended."""
  num_heads: int
  legacy_order: bool = True
  num_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  implementation: str = ""  # see ATTENTION_IMPLS

  @nn.compact
  def __call__(self, x, encoder_out=None):  # x: [B, H, W, C]; encoder_out: [B, L, E]
    batch, height, width, channels = x.shape
    if channels % self.num_heads:
      raise ValueError(f"attention: {channels} channels do not split into "
                       f"{self.num_heads} heads")
    dense = lambda f, name, **kw: nn.Dense(f, dtype=self.dtype,  # noqa: E731
                                           param_dtype=self.param_dtype, name=name, **kw)
    h = group_norm(x, "norm", self.num_groups, self.dtype, self.param_dtype)
    h = h.reshape(batch, height * width, channels)
    q, k, v = split_heads(dense(3 * channels, "qkv")(h), self.num_heads, 3,
                          self.legacy_order)
    if encoder_out is not None:
      ek, ev = split_heads(dense(2 * channels, "encoder_kv")(encoder_out.astype(self.dtype)),
                           self.num_heads, 2, self.legacy_order)
      k, v = jnp.concatenate([ek, k], axis=1), jnp.concatenate([ev, v], axis=1)
    a = dot_product_attention(q, k, v, self.implementation).reshape(
        batch, height * width, channels)
    out = dense(channels, "proj_out", kernel_init=zeros)(a)
    return x + out.reshape(x.shape).astype(x.dtype)


class AttentionPool2d(nn.Module):
  """CLIP-style attention pooling: the mean token attends over all positions."""
  num_head_channels: int
  out_channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, H, W, C] -> [B, out_channels]
    batch, height, width, channels = x.shape
    tokens = x.reshape(batch, height * width, channels)
    tokens = jnp.concatenate([jnp.mean(tokens, axis=1, keepdims=True), tokens], axis=1)
    pos = self.param("positional_embedding",
                     nn.initializers.normal(channels ** -0.5),
                     (height * width + 1, channels), self.param_dtype)
    tokens = tokens + pos[None].astype(tokens.dtype)
    qkv = nn.Dense(3 * channels, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="qkv_proj")(tokens)
    q, k, v = split_heads(qkv, channels // self.num_head_channels, 3, legacy_order=False)
    a = dot_product_attention(q[:, :1], k, v).reshape(batch, 1, channels)
    return nn.Dense(self.out_channels, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="c_proj")(a)[:, 0]
