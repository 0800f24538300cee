"""Reads a PyTorch checkpoint as numpy arrays, without running code from it.

A downloaded `.pt` is untrusted input: a pickle can name any function to
call. `torch.load(weights_only=True)` unpickles tensors and plain
containers only and refuses everything else, so a file that would run code
is refused, not run. torch is an optional dependency (the `convert` extra).
"""
from __future__ import annotations

import pathlib
import re
import zipfile

import numpy as np

INSTALL = ("pip install 'diffusion-jax[convert]' (PyTorch; its CPU build is enough: "
           "pip install torch --index-url https://download.pytorch.org/whl/cpu)")


def _torch():
  try:
    import torch
  except ImportError:
    raise ImportError(f"reading a PyTorch checkpoint needs torch: {INSTALL}") from None
  return torch


def _refusal(path: pathlib.Path, error: Exception) -> str:
  """One line for weights_only's refusal, naming what the pickle asked for."""
  text = str(error)
  named = re.search(r"(?:Unsupported global|GLOBAL|Unsupported operand)[^\n]*", text)
  what = named.group(0).strip().rstrip(".") if named else text.splitlines()[0]
  return (f"{path} was refused: its pickle asks for more than tensors ({what}); "
          "weights-only loading runs no code from it. Use a checkpoint that holds a "
          "state_dict of tensors")


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """The tensors of a PyTorch checkpoint (a state_dict, or a dict holding one
  under "state_dict", "model" or "ema"), as numpy arrays in their own dtype
  (bfloat16 as float32).

  Raises:
    ImportError: torch is not installed (with the install line).
    FileNotFoundError: no such file.
    ValueError: a pickle that would run code (refused, not run), a
      truncated or damaged file, or one that holds no state_dict.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such checkpoint file")
  torch = _torch()
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 (torch raises pickle's, zipfile's and its own)
    # Caught by name: this package imports no unpickler (tests/test_faults.py).
    if type(e).__name__ == "UnpicklingError":
      raise ValueError(_refusal(path, e)) from None
    if not isinstance(e, (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError)):
      raise
    reason = (str(e).splitlines() or [type(e).__name__])[0]
    raise ValueError(f"{path} is not a readable PyTorch checkpoint ({reason}): it is "
                     "truncated or damaged") from None
  state = _state_dict_in(loaded)
  if state is None:
    raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state_dict of tensors")
  return {key: _numpy(torch, value) for key, value in state.items()}


def _state_dict_in(loaded):
  if isinstance(loaded, dict) and loaded and all(isinstance(k, str) for k in loaded):
    for wrapper in ("state_dict", "model", "ema"):
      if isinstance(loaded.get(wrapper), dict) and len(loaded) <= 3:
        return _state_dict_in(loaded[wrapper])
    if all(hasattr(v, "detach") for v in loaded.values()):
      return loaded
  return None


def _numpy(torch, tensor) -> np.ndarray:
  tensor = tensor.detach().cpu()
  if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
    tensor = tensor.float()
  return tensor.numpy()
