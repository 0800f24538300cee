"""The FID Inception in Flax is pytorch-fid's network: on the deterministic
random weights of ../shared/testdata/inception_fid it reproduces the pool3
features and logits PyTorch computed (in float64) for inputs of 299, 64, 32
and 512 pixels (the resize: identity, up, up, down)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.models import inception

INPUTS = ("x299", "x64", "x32", "x512")


def reference(shared_dir):
  path = shared_dir / "testdata" / "inception_fid" / "inception_fid_random.npz"
  if not path.exists():
    if os.environ.get("CI"):
      pytest.fail(f"{path} is missing on CI")
    pytest.skip(f"{path} is absent (../shared holds the reference data)")
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


def random_weights(names, shapes, seed):
  """The README's rule: one generator, drawn in key order, float64 then float32."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, dims in zip(names, shapes):
    shape = tuple(int(d) for d in str(dims).split(",")) if str(dims) else ()
    if name.endswith("num_batches_tracked"):
      out[name] = np.zeros(shape, np.int64)
      continue
    if name.endswith((".bn.weight", ".bn.running_var")):
      value = rng.uniform(0.5, 1.5, shape)
    elif name.endswith((".bn.bias", ".bn.running_mean")):
      value = rng.normal(0.0, 0.1, shape)
    elif name.endswith("weight"):
      value = rng.normal(0.0, 1.25 / np.sqrt(np.prod(shape[1:])), shape)
    else:
      value = rng.normal(0.0, 0.05, shape)
    out[str(name)] = value.astype(np.float32)
  return out


def test_inception_reproduces_pytorch_fid(shared_dir):
  data = reference(shared_dir)
  state_dict = random_weights(data["names"], data["shapes"], int(data["seed"]))
  params = inception.from_torch(state_dict)
  images = {name: jnp.asarray(data[f"{name}_nchw"].transpose(0, 2, 3, 1)) for name in INPUTS}
  # What the first conv sees: the resize and 2x - 1, for the upsampled input.
  np.testing.assert_allclose(inception.resize_input(images["x64"]),
                             data["x64_resized_normalized_nchw"].transpose(0, 2, 3, 1),
                             atol=1e-6)
  batch = jnp.concatenate([inception.resize_input(images[n]) for n in INPUTS])  # one compile
  out = jax.jit(lambda p, x: inception.FIDInception().apply({"params": p}, x))(params, batch)
  start = 0
  for name in INPUTS:
    size = len(images[name])
    for key in ("pool3", "logits"):
      np.testing.assert_allclose(np.asarray(out[key][start:start + size]),
                                 data[f"{name}_{key}_f64"], atol=1e-4, err_msg=f"{name} {key}")
    start += size


def test_other_weights_are_refused(shared_dir):
  data = reference(shared_dir)
  state_dict = random_weights(data["names"], data["shapes"], 0)
  del state_dict["Mixed_7c.branch_pool.conv.weight"]
  with pytest.raises(ValueError, match="not the FID Inception: its weights have no "
                                       "'Mixed_7c.branch_pool.conv.weight'"):
    inception.from_torch(state_dict)
  wrong = random_weights(data["names"], data["shapes"], 0)
  wrong["fc.weight"] = np.zeros((1000, 2048), np.float32)  # torchvision's ImageNet head
  with pytest.raises(ValueError, match=r"'fc.weight' has shape \(1000, 2048\)"):
    inception.from_torch(wrong)


def test_the_converter_refuses_a_file_that_is_not_the_standard_weights(tmp_path):
  """Random weights, another network or a re-saved file: the digest differs
  from the one pytorch-fid's file name carries, and nothing is written."""
  from diffusion_jax.evaluation import inception_weights
  source = tmp_path / "pt_inception-2015-12-05-6726825d.pth"  # the right name, wrong bytes
  source.write_bytes(np.random.default_rng(0).bytes(1000))
  with pytest.raises(ValueError, match="its SHA-256 begins [0-9a-f]{8}, not 6726825d"):
    inception_weights.convert(source, tmp_path / "out.safetensors")
  assert not (tmp_path / "out.safetensors").exists()
