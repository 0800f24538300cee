"""GLIDE's text model: the transformer a text-conditional UNet reads.

The same function as glide-text2im's: token embeddings plus learned positions,
a padding embedding in place of the padded slots (`mask` False), a
bidirectional pre-norm transformer (LayerNorm eps 1e-5 in float32, exact
GELU), an optional final LayerNorm, and the projection of the output at the
last slot, which the UNet adds to its timestep embedding. The UNet's
attention layers take the whole output sequence (their `encoder_kv`).

Parameter names mirror GLIDE's `state_dict` (`transformer.resblocks.0.ln_1`);
`models/convert.py` maps them.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models import layers

Dtype = Any


@dataclasses.dataclass(frozen=True)
class TextSpec:
  """The text model's size (GLIDE's `text_ctx` and `xf_*` flags).

  Attributes:
    vocab_size: rows of the token embedding (GPT-2's BPE: 50257).
    text_ctx: tokens per prompt; shorter prompts are padded.
    width: the transformer's width (xf_width).
    layers: its residual blocks (xf_layers).
    heads: attention heads (xf_heads).
    final_ln: a LayerNorm after the last block (xf_final_ln).
    padding: a learned embedding replaces the padded slots (xf_padding).
    causal: each slot attends to itself and the slots before it only
      (xf_causal; not GLIDE's, whose attention sees every slot). A relation
      word then reads only its subject, so "A above B" and "B above A" differ
      in what it carries, not in positions alone (docs/text2im.md).
  """
  vocab_size: int = 50257
  text_ctx: int = 128
  width: int = 512
  layers: int = 16
  heads: int = 8
  final_ln: bool = True
  padding: bool = True
  causal: bool = False


def layer_norm(x, name: str, dtype: Dtype, param_dtype: Dtype):
  """torch's LayerNorm (eps 1e-5; Flax's default is 1e-6) in float32, cast to `dtype`.

  Call inside a compact method: the norm's parameters belong to the caller.
  """
  norm = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=param_dtype, name=name)
  return norm(x.astype(jnp.float32)).astype(dtype)


def _dense(module: nn.Module, features: int, name: str) -> nn.Dense:
  """A Dense layer in `module`'s compute and parameter dtypes."""
  return nn.Dense(features, dtype=module.dtype, param_dtype=module.param_dtype, name=name)


class SelfAttention(nn.Module):
  """Multi-head attention of a sequence over itself: `c_qkv`, then `c_proj`.

  Each head's q, k and v are adjacent in `c_qkv`'s output (GLIDE's order).
  """
  width: int
  heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  causal: bool = False

  @nn.compact
  def __call__(self, x):  # [B, L, W] -> [B, L, W]
    batch, length, _ = x.shape
    q, k, v = layers.split_heads(_dense(self, 3 * self.width, "c_qkv")(x), self.heads, 3,
                                 legacy_order=True)
    a = layers.dot_product_attention(q, k, v, causal=self.causal).reshape(
        batch, length, self.width)
    return _dense(self, self.width, "c_proj")(a)


class MLP(nn.Module):
  """`c_fc` to 4 x width, exact GELU, `c_proj` back."""
  width: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, L, W] -> [B, L, W]
    hidden = nn.gelu(_dense(self, 4 * self.width, "c_fc")(x), approximate=False)
    return _dense(self, self.width, "c_proj")(hidden)


class ResidualAttentionBlock(nn.Module):
  """x + attn(ln_1(x)), then + mlp(ln_2(x)): attention over every slot
  (GLIDE's), or over the slots up to each one (`causal`)."""
  width: int
  heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  causal: bool = False

  @nn.compact
  def __call__(self, x):  # [B, L, W] -> [B, L, W]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x + SelfAttention(self.width, self.heads, name="attn", causal=self.causal, **kw)(
        layer_norm(x, "ln_1", **kw))
    return x + MLP(self.width, name="mlp", **kw)(layer_norm(x, "ln_2", **kw))


class Transformer(nn.Module):
  """GLIDE's `Transformer`: `resblocks_0` ... in turn."""
  width: int
  layers: int
  heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  causal: bool = False

  @nn.compact
  def __call__(self, x):  # [B, L, W] -> [B, L, W]
    for i in range(self.layers):
      x = ResidualAttentionBlock(self.width, self.heads, self.dtype, self.param_dtype,
                                 self.causal, name=f"resblocks_{i}")(x)
    return x


class TextEncoder(nn.Module):
  """Tokens and mask -> (xf_proj [B, out_dim], xf_out [B, L, W]).

  xf_proj, the projection of the output at the last slot, is added to the
  UNet's timestep embedding; xf_out is what its attention layers attend to.
  """
  spec: TextSpec
  out_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array):  # [B, L] int, [B, L] bool
    spec = self.spec
    if tokens.ndim != 2 or tokens.shape[1] != spec.text_ctx or mask.shape != tokens.shape:
      raise ValueError(f"the text model takes tokens and mask [B, {spec.text_ctx}]; got "
                       f"{tuple(tokens.shape)} and {tuple(mask.shape)}")
    init = nn.initializers.normal(0.01)
    h = nn.Embed(spec.vocab_size, spec.width, embedding_init=init, dtype=jnp.float32,
                 param_dtype=self.param_dtype, name="token_embedding")(tokens)
    positions = self.param("positions", init, (spec.text_ctx, spec.width), self.param_dtype)
    h = h + positions[None]  # [B, L, W]
    if spec.padding:
      padding = self.param("padding", init, (spec.text_ctx, spec.width), self.param_dtype)
      h = jnp.where(mask[..., None], h, padding[None])
    h = Transformer(spec.width, spec.layers, spec.heads, self.dtype, self.param_dtype,
                    spec.causal, name="transformer")(h.astype(self.dtype))
    if spec.final_ln:
      h = layer_norm(h, "final_ln", self.dtype, self.param_dtype)
    proj = _dense(self, self.out_dim, "transformer_proj")(h[:, -1])
    return proj, h
