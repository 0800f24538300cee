"""Import PyTorch `state_dict`s of the OpenAI models onto our Flax parameters.

Our submodule names mirror the PyTorch keys with "." before an index written
as "_" (`input_blocks.3.1.qkv.weight` is `input_blocks_3_1/qkv/kernel`), so
the mapping is a rule, not a table. Layouts differ: conv weights go from
[out, in, kh, kw] to [kh, kw, in, out]; Linear and 1x1 Conv1d weights from
[out, in(, 1)] to [in, out]; ADM's attention-pool positional embedding from
[C, L] to [L, C].

GLIDE's text model (`models/text.py`) lives under our "text" module and at
the top level of GLIDE's keys; its positional and padding embeddings are
[L, C] in both (our `positions` and `padding`), and its `ln_1`, `ln_2` are
names, not indices.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import flax
import numpy as np

_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight",
               "bias": "bias", "positional_embedding": "positional_embedding",
               "positions": "positional_embedding", "padding": "padding_embedding"}
# Our modules with no PyTorch counterpart: their children sit at the top level.
_FLATTENED = {"text"}
# Module names that end in a number but are not indices.
_VERBATIM = {"ln_1", "ln_2"}


def _torch_module(name: str) -> str:
  return name if name in _VERBATIM else re.sub(r"_(\d+)", r".\1", name)


def torch_key(path: tuple[str, ...]) -> str:
  """The PyTorch key of a Flax parameter path."""
  *modules, leaf = path
  if leaf not in _LEAF_NAMES:
    raise ValueError(f"no PyTorch counterpart for parameter {'/'.join(path)}")
  if modules and modules[0] in _FLATTENED:
    modules = modules[1:]
  return ".".join([_torch_module(m) for m in modules] + [_LEAF_NAMES[leaf]])


def _to_flax_layout(leaf: str, value: np.ndarray, target_ndim: int) -> np.ndarray:
  if leaf == "kernel" and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if leaf == "kernel" and value.ndim == 3 and value.shape[-1] == 1 and target_ndim == 2:
    return value[:, :, 0].T
  if leaf == "kernel" and value.ndim == 2:
    return value.T
  if leaf == "positional_embedding":
    return value.T
  return value


def load_state_dict_npz(path, prefix: str = "param/") -> dict[str, np.ndarray]:
  """The arrays of an `.npz` whose keys start with `prefix`, prefix removed."""
  with np.load(path, allow_pickle=False) as data:
    return {k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)}


def from_torch(state_dict: Mapping[str, np.ndarray], target: Any) -> dict:
  """Flax params shaped like `target` filled from a PyTorch state_dict.

  Args:
    state_dict: key -> array (numpy, float), PyTorch layout.
    target: the Flax params (or their `jax.eval_shape`) to fill.

  Returns:
    A params dict with the structure of `target` (numpy float32 arrays).

  Raises:
    ValueError: naming the first missing key, shape mismatch or unused key.
  """
  return _filled(state_dict, target, torch_key,
                 lambda path, value, spec: _to_flax_layout(path[-1], value, len(spec.shape)))


def from_torch_verbatim(state_dict: Mapping[str, np.ndarray], target: Any) -> dict:
  """As `from_torch`, for modules that keep PyTorch's names and layouts (the
  noised CLIP, `models/clip.py`): the key is the path joined by "."."""
  return _filled(state_dict, target, ".".join, lambda path, value, spec: value)


def _filled(state_dict, target, key_of, layout) -> dict:
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(target))
  out, used = {}, set()
  for path, spec in flat.items():
    key = key_of(path)
    if key not in state_dict:
      raise ValueError(f"the state_dict has no {key!r} (for {'/'.join(path)})")
    value = layout(path, np.asarray(state_dict[key], np.float32), spec)
    if value.shape != tuple(spec.shape):
      raise ValueError(f"{key!r} has shape {value.shape} in our layout but "
                       f"{'/'.join(path)} expects {tuple(spec.shape)}")
    out[path] = value
    used.add(key)
  unused = sorted(set(state_dict) - used)
  if unused:
    raise ValueError(f"{len(unused)} state_dict entries match no parameter, "
                     f"e.g. {unused[:3]}: is the architecture configured the same?")
  return flax.traverse_util.unflatten_dict(out)
