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


# Our Dense layers that are 1x1 Conv1d layers in PyTorch ([out, in, 1]): the
# attention blocks' and the attention pool's projections. GLIDE's text
# transformer's c_proj is a Linear.
_CONV1D = {"qkv", "proj_out", "encoder_kv", "qkv_proj"}


def _is_conv1d(path: tuple[str, ...]) -> bool:
  module = path[-2] if len(path) > 1 else ""
  return module in _CONV1D or (module == "c_proj" and path[0] != "text")


def torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch shape of the parameter our `path` holds with `shape`."""
  leaf = path[-1]
  if leaf == "kernel" and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if leaf == "kernel" and len(shape) == 2:
    return (shape[1], shape[0]) + ((1,) if _is_conv1d(path) else ())
  if leaf == "positional_embedding":
    return tuple(reversed(shape))
  return tuple(shape)


def _to_flax_layout(leaf: str, value: np.ndarray) -> np.ndarray:
  if leaf == "kernel" and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if leaf == "kernel" and value.ndim == 3:
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


class StateDictMismatch(ValueError):
  """A state_dict that does not fit the model: every missing key, every key
  that matches no parameter, and every shape that differs (PyTorch layout)."""

  def __init__(self, missing, unused, shapes, what: str = "the model"):
    self.missing, self.unused, self.shapes = sorted(missing), sorted(unused), sorted(shapes)
    parts = []
    if self.missing:
      parts.append(f"{len(self.missing)} keys missing ({_some(self.missing)})")
    if self.unused:
      parts.append(f"{len(self.unused)} keys match no parameter ({_some(self.unused)})")
    if self.shapes:
      shown = [f"{k} is {tuple(got)}, not {tuple(want)}" for k, got, want in self.shapes]
      parts.append(f"{len(self.shapes)} shapes differ ({_some(shown)})")
    super().__init__(f"the state_dict does not fit {what}: {'; '.join(parts)}")

  def lines(self) -> list[str]:
    """One line per problem, all of them."""
    return ([f"missing: {k}" for k in self.missing] +
            [f"unused: {k}" for k in self.unused] +
            [f"shape: {k} is {tuple(got)}; the model needs {tuple(want)}"
             for k, got, want in self.shapes])


def _some(names, shown: int = 4) -> str:
  more = f", and {len(names) - shown} more" if len(names) > shown else ""
  return ", ".join(str(n) for n in names[:shown]) + more


def expected_keys(target: Any) -> dict[str, tuple[int, ...]]:
  """PyTorch key -> PyTorch shape of every parameter of `target` (Flax params
  or their `jax.eval_shape`): the state_dict that `from_torch` takes."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(target))
  return {torch_key(path): torch_shape(path, tuple(spec.shape)) for path, spec in flat.items()}


def from_torch(state_dict: Mapping[str, np.ndarray], target: Any, what: str = "the model") -> dict:
  """Flax params shaped like `target` filled from a PyTorch state_dict.

  Args:
    state_dict: key -> array (numpy, any float dtype), PyTorch layout.
    target: the Flax params (or their `jax.eval_shape`) to fill.
    what: names the model in the error.

  Returns:
    A params dict with the structure of `target` (numpy float32 arrays).

  Raises:
    StateDictMismatch: naming every missing key, unused key and shape mismatch.
  """
  return _filled(state_dict, target, torch_key, torch_shape,
                 lambda path, value: _to_flax_layout(path[-1], value), what)


def from_torch_verbatim(state_dict: Mapping[str, np.ndarray], target: Any,
                        what: str = "the model") -> dict:
  """As `from_torch`, for modules that keep PyTorch's names and layouts (the
  noised CLIP, `models/clip.py`): the key is the path joined by "."."""
  return _filled(state_dict, target, ".".join, lambda path, shape: tuple(shape),
                 lambda path, value: value, what)


def _filled(state_dict, target, key_of, shape_of, layout, what) -> dict:
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(target))
  keys = {key_of(path): path for path in flat}
  missing = [k for k in keys if k not in state_dict]
  unused = [k for k in state_dict if k not in keys]
  shapes = []
  for key, path in keys.items():
    want = shape_of(path, tuple(flat[path].shape))
    if key in state_dict and tuple(np.shape(state_dict[key])) != want:
      shapes.append((key, tuple(np.shape(state_dict[key])), want))
  if missing or unused or shapes:
    raise StateDictMismatch(missing, unused, shapes, what)
  return flax.traverse_util.unflatten_dict(
      {path: layout(path, np.asarray(state_dict[key], np.float32))
       for key, path in keys.items()})
