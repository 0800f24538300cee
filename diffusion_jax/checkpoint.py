"""Checkpoints with Orbax: the only module that talks to Orbax.

A checkpoint step holds the train state (restored into the shardings asked
for, on any mesh shape), the config as JSON and a small metadata JSON (the
data's description, so a model can be rebuilt without its dataset). Saves
are asynchronous: `wait()` before the process exits. Orbax writes each step
into a temporary folder and renames it when complete, so an interrupted save
is never picked up; a step that cannot be read is skipped for the one
before it, with a warning.

Inference reads only some fields of the state (`restore_fields`: the EMA
parameters and the step), from the saved metadata alone: it needs neither
the model nor the optimizer that wrote them.
"""
from __future__ import annotations

import errno
import functools
import os
import pathlib
from typing import Any, Optional, Sequence

import jax
import orbax.checkpoint as ocp
from absl import logging

from diffusion_jax import faults


def _path_names(path) -> tuple:
  """A key path as plain names, whatever the container (dict, dataclass, list)."""
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
               for k in path)


def _shapes(tree) -> dict:
  return {_path_names(p): tuple(leaf.shape)
          for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


class SaveError(OSError):
  """A checkpoint could not be written (a full disk, an I/O error); the
  checkpoints before it are intact."""


def _reason(error: BaseException) -> str:
  """What failed, in a few words: the first OS error in the exception's
  chain (Orbax wraps them, TensorStore reports them as text)."""
  seen = error
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno:
      return os.strerror(seen.errno).lower()
    if "No space left on device" in str(seen):
      return os.strerror(errno.ENOSPC).lower()
    seen = seen.__cause__ or seen.__context__
  return (str(error).strip().splitlines() or [type(error).__name__])[0]


@functools.cache
def _type_handlers():
  """Orbax's type handlers, with replica-parallel array writes off on the CPU.

  Replica-parallel saving splits each replicated array over its replicas; on
  one host's CPU devices it gains nothing and costs a 10 s first save and
  ~3 s per later save of a small state on 8 devices (0.3 s and 1 s without).
  Orbax turns it off for GPUs itself.
  """
  handlers = [(ty, ocp.type_handlers.get_type_handler(ty))
              for ty in ocp.type_handlers.supported_types() if ty is not jax.Array]
  if jax.default_backend() == "cpu":
    array_handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=False)
  else:
    array_handler = ocp.type_handlers.get_type_handler(jax.Array)
  return ocp.type_handlers.create_type_handler_registry((jax.Array, array_handler), *handlers)


class Checkpointer:
  """Save and restore train states under `directory` (one folder per step).

  Args:
    directory: where the steps live.
    max_to_keep: keep the last N steps (None keeps all).
    keep_period: also keep every step divisible by this (None: no such rule).
    read_only: only restore (inference): create nothing, delete nothing.
  """

  def __init__(self, directory: str, max_to_keep: Optional[int] = 3,
               keep_period: Optional[int] = None, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(  # read-only: the values Orbax warns it sets
        max_to_keep=None if read_only else max_to_keep, keep_period=keep_period or None,
        save_interval_steps=0 if read_only else 1, create=not read_only,
        read_only=read_only, enable_async_checkpointing=not read_only,
        cleanup_tmp_directories=not read_only)  # what an interrupted save left
    handlers = {"state": ocp.PyTreeCheckpointHandler(type_handler_registry=_type_handlers()),
                "config": ocp.JsonCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=handlers)
    if not read_only:
      faults.install(self._manager)  # the reliability tests' SIGKILL points; else nothing

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, config_json: dict, meta: dict) -> bool:
    """Starts an asynchronous save of `state` at `step`.

    Raises:
      SaveError: this save, or the asynchronous one before it, failed.
    """
    try:
      started = self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeSave(state), config=ocp.args.JsonSave(config_json),
          meta=ocp.args.JsonSave(meta)), force=True)
    except Exception as e:  # noqa: BLE001 (Orbax raises what its threads raised)
      raise self.io_error(e) from e
    faults.after_save_started(step)
    return started

  def complete_steps(self) -> list[int]:
    """The steps whose folders are on disk, renamed from temporary: complete."""
    folder = pathlib.Path(self.directory)
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) \
        if folder.is_dir() else []

  def io_error(self, error: BaseException, what: Optional[str] = None) -> SaveError:
    """`error` (a failed write) as one sentence: `what` failed (default: a
    checkpoint), why, and which checkpoint is intact."""
    what = what or f"could not write a checkpoint in {self.directory}"
    steps = self.complete_steps()
    intact = (f"the checkpoint of step {steps[-1]} is intact" if steps
              else "no earlier checkpoint exists")
    return SaveError(f"{what}: {_reason(error)}; {intact} (free space and rerun to resume)")

  def _state_metadata(self, step: int) -> dict:
    """The saved state's tree of array metadata (shape, dtype), by field name."""
    metadata = self._manager.item_metadata(step)
    tree = None if metadata is None else metadata.get("state")
    if tree is None:
      raise ValueError("no state metadata")
    return getattr(tree, "tree", tree)

  def check_architecture(self, step: int, abstract_state: Any) -> None:
    """Raises ValueError naming the first parameter whose shape differs."""
    saved = _shapes(self._state_metadata(step))
    expected = _shapes(abstract_state)
    for name, shape in expected.items():
      if name not in saved:
        raise ValueError(f"the checkpoint at step {step} in {self.directory} has no "
                         f"{'/'.join(name)}: it holds a different architecture")
      if saved[name] != shape:
        raise ValueError(f"the checkpoint at step {step} does not match the model: "
                         f"{'/'.join(name)} has shape {saved[name]} there but "
                         f"{shape} in the model the config builds")
    extra = sorted(set(saved) - set(expected))
    if extra:
      raise ValueError(f"the checkpoint at step {step} holds {'/'.join(extra[0])}, "
                       "which the model the config builds lacks")

  def _newest_first(self, step: Optional[int]) -> list[int]:
    """The saved steps at or before `step` (all if None), newest first."""
    return [s for s in reversed(self.all_steps()) if step is None or s <= step]

  def _readable_steps(self, step: Optional[int]):
    """Steps at or before `step` (newest first) whose metadata reads."""
    for candidate in self._newest_first(step):
      try:
        self._state_metadata(candidate)
      except Exception as e:  # noqa: BLE001 (any failure to read means unusable)
        _warn_unreadable(candidate, self.directory, e)
        continue
      yield candidate

  def _restore_step(self, step: int, item: Any, partial: bool = False):
    return self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=partial),
        config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))

  def restore(self, abstract_state: Any, step: Optional[int] = None):
    """(state, config dict, meta dict, step) of `step` or the latest readable step.

    `abstract_state` holds `jax.ShapeDtypeStruct`s with the target shardings.
    A step that fails to read (truncated, corrupt) is skipped for the
    previous one, with a warning; an architecture mismatch is an error.
    """
    for candidate in self._readable_steps(step):
      self.check_architecture(candidate, abstract_state)
      try:
        restored = self._restore_step(candidate, abstract_state)
      except Exception as e:  # noqa: BLE001
        _warn_unreadable(candidate, self.directory, e)
        continue
      return restored.state, restored.config, restored.meta, candidate
    raise FileNotFoundError(f"no readable checkpoint in {self.directory}")

  def restore_fields(self, fields: Sequence[str], step: Optional[int] = None,
                     device: Optional[jax.Device] = None):
    """({field: subtree}, config dict, meta dict, step) for some parts of the
    saved state, named as paths ("ema_params/0.995", "step"), on one device.

    The shapes come from the saved metadata, so neither the model nor the
    optimizer is needed; the caller checks them against its model.
    """
    sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
    for candidate in self._readable_steps(step):
      item = {}
      for field in fields:
        subtree = _subtree(self._state_metadata(candidate), field)
        if subtree is None:
          raise ValueError(f"the checkpoint at step {candidate} in {self.directory} has "
                           f"no {field!r}")
        _set_path(item, field, jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), subtree))
      try:
        restored = self._restore_step(candidate, item, partial=True)
      except Exception as e:  # noqa: BLE001
        _warn_unreadable(candidate, self.directory, e)
        continue
      values = {field: _subtree(restored.state, field) for field in fields}
      return values, restored.config, restored.meta, candidate
    raise FileNotFoundError(f"no readable checkpoint in {self.directory}")

  def restore_json(self, step: Optional[int] = None) -> tuple[dict, dict]:
    """(config, meta) of `step` or the latest step where both read, without
    the state (a step whose JSON is missing or damaged is skipped, with a
    warning)."""
    for candidate in self._newest_first(step):
      try:
        restored = self._manager.restore(candidate, args=ocp.args.Composite(
            config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001
        _warn_unreadable(candidate, self.directory, e)
        continue
      return restored.config, restored.meta
    raise FileNotFoundError(f"no readable checkpoint in {self.directory}")

  def wait(self) -> None:
    """Waits for the asynchronous save. Raises SaveError if it failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self.io_error(e) from e

  def close(self) -> None:
    """Waits for the last save, then stops Orbax's threads, even if it failed.

    Raises:
      SaveError: the last save failed.
    """
    try:
      self.wait()
    except SaveError:
      try:
        self._manager.close()
      except Exception as e:  # noqa: BLE001 (the save's error is the one to report)
        logging.info("closing the checkpoint manager after a failed save: %s", e)
      raise
    self._manager.close()


def _subtree(tree: Any, path: str) -> Any:
  """tree["a"]["b"] for path "a/b", or None where it is absent."""
  for name in path.split("/"):
    if not isinstance(tree, dict) or name not in tree:
      return None
    tree = tree[name]
  return tree


def _set_path(tree: dict, path: str, value: Any) -> None:
  *parents, leaf = path.split("/")
  for name in parents:
    tree = tree.setdefault(name, {})
  tree[leaf] = value


def _warn_unreadable(step, directory, error) -> None:
  logging.warning("checkpoint step %d in %s is unreadable (%s); trying the one "
                  "before it", step, directory, error)
