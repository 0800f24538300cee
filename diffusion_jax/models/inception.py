"""The FID Inception-v3 in Flax: pytorch-fid's network (`fid_inception_v3`,
`InceptionV3(output_blocks=[3], resize_input=True, normalize_input=True)`).

torchvision's Inception3 with pytorch-fid's patched blocks: A (Mixed_5b-d),
C (Mixed_6b-e) and E_1 (Mixed_7b) pool with a 3x3 average that does not
count the padding, E_2 (Mixed_7c) with a 3x3 max. BatchNorm uses its running
statistics with eps 1e-3. The input, NHWC in [0, 1], is resized to 299x299
bilinearly (half-pixel centers, clamped at the border, no antialiasing: what
`F.interpolate(..., align_corners=False)` does), then mapped to [-1, 1].

Parameters keep the PyTorch names: `{"Mixed_5b": {"branch1x1": {"conv":
{"weight"}, "bn": {"weight", "bias", "running_mean", "running_var"}}}}`,
conv weights as HWIO, `fc` as PyTorch's [1008, 2048]. `from_torch` maps a
`state_dict` onto them. Outputs: `pool3` [B, 2048] (the FID features) and
`logits` [B, 1008].
"""
from __future__ import annotations

from typing import Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
BN_EPS = 1e-3
_PRECISION = jax.lax.Precision.HIGHEST


class BasicConv2d(nn.Module):
  """conv (no bias) -> BatchNorm (running statistics) -> ReLU."""
  features: int
  kernel: tuple = (1, 1)
  stride: int = 1
  padding: tuple = (0, 0)

  @nn.compact
  def __call__(self, x):
    x = _Conv(self.features, tuple(self.kernel), self.stride, tuple(self.padding),
              name="conv")(x)
    return jax.nn.relu(_BatchNorm(self.features, name="bn")(x))


class _Conv(nn.Module):
  features: int
  kernel: tuple
  stride: int
  padding: tuple

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel
    weight = self.param("weight", nn.initializers.lecun_normal(),
                        (kh, kw, x.shape[-1], self.features))
    ph, pw = self.padding
    return jax.lax.conv_general_dilated(
        x, weight, (self.stride, self.stride), ((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_PRECISION)


class _BatchNorm(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    scale = self.param("weight", nn.initializers.ones, (self.features,))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    mean = self.param("running_mean", nn.initializers.zeros, (self.features,))
    var = self.param("running_var", nn.initializers.ones, (self.features,))
    return (x - mean) * (scale / jnp.sqrt(var + BN_EPS)) + bias


def _max_pool(x, stride, padding=0):
  return nn.max_pool(x, (3, 3), (stride, stride), ((padding, padding),) * 2)


def _avg_pool_excluding_padding(x):
  """3x3 average, stride 1, pad 1, the padding not counted (pytorch-fid)."""
  total = nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=True) * 9
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  count = nn.avg_pool(ones, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=True) * 9
  return total / count


def _conv(features, name, kernel=(1, 1), stride=1, padding=(0, 0)):
  return BasicConv2d(features, kernel, stride, padding, name=name)


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = _conv(64, "branch1x1")(x)
    b5 = _conv(64, "branch5x5_2", (5, 5), padding=(2, 2))(_conv(48, "branch5x5_1")(x))
    b3 = _conv(64, "branch3x3dbl_1")(x)
    b3 = _conv(96, "branch3x3dbl_2", (3, 3), padding=(1, 1))(b3)
    b3 = _conv(96, "branch3x3dbl_3", (3, 3), padding=(1, 1))(b3)
    bp = _conv(self.pool_features, "branch_pool")(_avg_pool_excluding_padding(x))
    return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = _conv(384, "branch3x3", (3, 3), stride=2)(x)
    bd = _conv(64, "branch3x3dbl_1")(x)
    bd = _conv(96, "branch3x3dbl_2", (3, 3), padding=(1, 1))(bd)
    bd = _conv(96, "branch3x3dbl_3", (3, 3), stride=2)(bd)
    return jnp.concatenate([b3, bd, _max_pool(x, 2)], -1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = _conv(192, "branch1x1")(x)
    b7 = _conv(c7, "branch7x7_1")(x)
    b7 = _conv(c7, "branch7x7_2", (1, 7), padding=(0, 3))(b7)
    b7 = _conv(192, "branch7x7_3", (7, 1), padding=(3, 0))(b7)
    bd = _conv(c7, "branch7x7dbl_1")(x)
    bd = _conv(c7, "branch7x7dbl_2", (7, 1), padding=(3, 0))(bd)
    bd = _conv(c7, "branch7x7dbl_3", (1, 7), padding=(0, 3))(bd)
    bd = _conv(c7, "branch7x7dbl_4", (7, 1), padding=(3, 0))(bd)
    bd = _conv(192, "branch7x7dbl_5", (1, 7), padding=(0, 3))(bd)
    bp = _conv(192, "branch_pool")(_avg_pool_excluding_padding(x))
    return jnp.concatenate([b1, b7, bd, bp], -1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = _conv(320, "branch3x3_2", (3, 3), stride=2)(_conv(192, "branch3x3_1")(x))
    b7 = _conv(192, "branch7x7x3_1")(x)
    b7 = _conv(192, "branch7x7x3_2", (1, 7), padding=(0, 3))(b7)
    b7 = _conv(192, "branch7x7x3_3", (7, 1), padding=(3, 0))(b7)
    b7 = _conv(192, "branch7x7x3_4", (3, 3), stride=2)(b7)
    return jnp.concatenate([b3, b7, _max_pool(x, 2)], -1)


class InceptionE(nn.Module):
  """`max_pool`: pytorch-fid's E_2 (Mixed_7c); else E_1's average."""
  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    b1 = _conv(320, "branch1x1")(x)
    b3 = _conv(384, "branch3x3_1")(x)
    b3 = jnp.concatenate([_conv(384, "branch3x3_2a", (1, 3), padding=(0, 1))(b3),
                          _conv(384, "branch3x3_2b", (3, 1), padding=(1, 0))(b3)], -1)
    bd = _conv(448, "branch3x3dbl_1")(x)
    bd = _conv(384, "branch3x3dbl_2", (3, 3), padding=(1, 1))(bd)
    bd = jnp.concatenate([_conv(384, "branch3x3dbl_3a", (1, 3), padding=(0, 1))(bd),
                          _conv(384, "branch3x3dbl_3b", (3, 1), padding=(1, 0))(bd)], -1)
    pooled = _max_pool(x, 1, 1) if self.max_pool else _avg_pool_excluding_padding(x)
    bp = _conv(192, "branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], -1)


def resize_input(images):
  """[B, H, W, 3] in [0, 1] -> [B, 299, 299, 3] in [-1, 1] (bilinear, no antialias)."""
  images = images.astype(jnp.float32)
  resized = jax.image.resize(images, images.shape[:1] + (INPUT_SIZE, INPUT_SIZE, 3),
                             "bilinear", antialias=False)
  return 2 * resized - 1


class FIDInception(nn.Module):
  """pytorch-fid's Inception after its resize: [B, 299, 299, 3] in [-1, 1]
  (`resize_input`) -> {"pool3" [B, 2048], "logits" [B, 1008]}."""

  @nn.compact
  def __call__(self, x):
    x = _conv(32, "Conv2d_1a_3x3", (3, 3), stride=2)(x)
    x = _conv(32, "Conv2d_2a_3x3", (3, 3))(x)
    x = _conv(64, "Conv2d_2b_3x3", (3, 3), padding=(1, 1))(x)
    x = _max_pool(x, 2)
    x = _conv(80, "Conv2d_3b_1x1")(x)
    x = _conv(192, "Conv2d_4a_3x3", (3, 3))(x)
    x = _max_pool(x, 2)
    for name, pool in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = InceptionA(pool, name=name)(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                     ("Mixed_6e", 192)):
      x = InceptionC(c7, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(False, name="Mixed_7b")(x)
    x = InceptionE(True, name="Mixed_7c")(x)
    pool3 = jnp.mean(x, axis=(1, 2))  # [B, 2048]
    weight = self.param("fc_weight", nn.initializers.zeros, (1008, 2048))
    bias = self.param("fc_bias", nn.initializers.zeros, (1008,))
    logits = jnp.dot(pool3, weight.T, precision=_PRECISION) + bias
    return {"pool3": pool3, "logits": logits}


def torch_key(path: tuple) -> str:
  """The PyTorch key of a parameter path ("fc_weight" is "fc.weight")."""
  return ".".join(path).replace("fc_weight", "fc.weight").replace("fc_bias", "fc.bias")


def from_torch(state_dict: Mapping[str, np.ndarray]) -> dict:
  """Our parameters from pytorch-fid's `fid_inception_v3` state_dict (the
  `num_batches_tracked` counters ignored; conv weights to HWIO).

  Raises:
    ValueError: a missing key, an unused one, or a shape that differs: the
      file is not this network.
  """
  target = jax.eval_shape(FIDInception().init, jax.random.key(0),
                          jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))["params"]
  flat = flax.traverse_util.flatten_dict(target)
  given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  out = {}
  for path, spec in flat.items():
    key = torch_key(path)
    if key not in given:
      raise ValueError(f"not the FID Inception: its weights have no {key!r}")
    value = np.asarray(given.pop(key), np.float32)
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)
    if value.shape != tuple(spec.shape):
      raise ValueError(f"not the FID Inception: {key!r} has shape {value.shape}, "
                       f"expected {tuple(spec.shape)}")
    out[path] = value
  if given:
    raise ValueError(f"not the FID Inception: {len(given)} weights match nothing, e.g. "
                     f"{sorted(given)[:3]}")
  return flax.traverse_util.unflatten_dict(out)


def fid_outputs(params, images) -> dict:
  """pytorch-fid's outputs for images [B, H, W, 3] in [0, 1]: resized, then
  the network (jit it, or call it inside a jitted function)."""
  return FIDInception().apply({"params": params}, resize_input(images))
