"""The FID Inception's weights: converted once from pytorch-fid's file, then
read with no network and no PyTorch.

    pip install torch   # once, for the conversion only (CPU build is enough)
    python -m diffusion_jax.evaluation.inception_weights \
        --source=pt_inception-2015-12-05-6726825d.pth --output=fid_inception.safetensors

The source is read with `torch.load(weights_only=True)`: a downloaded file
is untrusted input, and no code in it runs. It must be the standard FID
weights: its SHA-256 must begin with 6726825d, the digest its name carries
(PyTorch Hub's naming), and its keys and shapes must be the FID network's.
Random weights, another network or a re-saved file are refused. The output
records the digest; `load` refuses a file without it. Name the output in
`--config.eval.inception=PATH` (`--mode=eval`).
"""
from __future__ import annotations

import argparse
import hashlib
import pathlib

import flax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.models import inception

SHA256_PREFIX = "6726825d"  # pt_inception-2015-12-05-6726825d.pth
_TAG = "fid_inception_sha256"


def sha256_of(path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as handle:
    for block in iter(lambda: handle.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def convert(source, output) -> pathlib.Path:
  """Checks and converts pytorch-fid's weights file to safetensors.

  Raises:
    ValueError: the file is not the standard FID weights (digest, keys or shapes).
  """
  source, output = pathlib.Path(source), pathlib.Path(output)
  if not source.is_file():
    raise FileNotFoundError(f"no weights file {source}")
  digest = sha256_of(source)
  if not digest.startswith(SHA256_PREFIX):
    raise ValueError(f"{source} is not pytorch-fid's pt_inception-2015-12-05-6726825d.pth: "
                     f"its SHA-256 begins {digest[:8]}, not {SHA256_PREFIX} (random weights, "
                     "another network or a re-saved file give other FIDs)")
  try:
    import torch
  except ImportError:
    raise ValueError("converting the Inception weights needs PyTorch once: "
                     "pip install torch") from None
  state_dict = torch.load(source, map_location="cpu", weights_only=True)
  params = inception.from_torch({k: v.numpy() for k, v in state_dict.items()})
  save(params, output, digest)
  return output


def save(params, output, digest: str) -> None:
  from safetensors.numpy import save_file
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  output.parent.mkdir(parents=True, exist_ok=True)
  save_file({k: np.asarray(v, np.float32) for k, v in flat.items()}, str(output),
            metadata={_TAG: digest})


def load(path) -> dict:
  """The converted weights (checked to come from the standard file).

  Raises:
    ValueError: a file `convert` did not write from the standard weights.
  """
  from safetensors import safe_open
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no Inception weights file {path}; convert pytorch-fid's "
                            "with python -m diffusion_jax.evaluation.inception_weights")
  with safe_open(str(path), "np") as handle:
    digest = (handle.metadata() or {}).get(_TAG, "")
    if not digest.startswith(SHA256_PREFIX):
      raise ValueError(f"{path} was not converted from the standard FID weights "
                       "(python -m diffusion_jax.evaluation.inception_weights)")
    flat = {tuple(k.split("/")): jnp.asarray(handle.get_tensor(k))
            for k in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
  return flax.traverse_util.unflatten_dict(flat)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--source", required=True, help="pt_inception-2015-12-05-6726825d.pth")
  parser.add_argument("--output", required=True, help="where the safetensors go")
  args = parser.parse_args(argv)
  try:
    path = convert(args.source, args.output)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  print(f"wrote {path}; use it with --config.eval.inception={path}")  # noqa: T201


if __name__ == "__main__":
  main()
