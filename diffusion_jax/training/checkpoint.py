"""Checkpoints with Orbax: the only module that talks to Orbax.

A checkpoint step holds the train state (restored into the shardings asked
for, on any mesh shape), the config as JSON and a small metadata JSON (the
data's description, so a model can be rebuilt without its dataset). Saves
are asynchronous: `wait()` before the process exits. Orbax writes each step
into a temporary folder and renames it when complete, so an interrupted save
is never picked up; a step that cannot be read is skipped for the one
before it, with a warning.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging


def _path_names(path) -> tuple:
  """A key path as plain names, whatever the container (dict, dataclass, list)."""
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
               for k in path)


def _shapes(tree) -> dict:
  return {_path_names(p): tuple(leaf.shape)
          for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


class Checkpointer:
  """Save and restore train states under `directory` (one folder per step).

  Args:
    directory: where the steps live.
    max_to_keep: keep the last N steps (None keeps all).
    keep_period: also keep every step divisible by this (None: no such rule).
  """

  def __init__(self, directory: str, max_to_keep: Optional[int] = 3,
               keep_period: Optional[int] = None):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, keep_period=keep_period or None, create=True,
        enable_async_checkpointing=True)
    handlers = {"state": ocp.StandardCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=handlers)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, config_json: dict, meta: dict) -> bool:
    """Starts an asynchronous save of `state` at `step`."""
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config_json),
        meta=ocp.args.JsonSave(meta)), force=True)

  def check_architecture(self, step: int, abstract_state: Any) -> None:
    """Raises ValueError naming the first parameter whose shape differs."""
    saved = _shapes(self._manager.item_metadata(step)["state"])
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

  def restore(self, abstract_state: Any, step: Optional[int] = None):
    """(state, config dict, meta dict, step) of `step` or the latest readable step.

    `abstract_state` holds `jax.ShapeDtypeStruct`s with the target shardings.
    A step that fails to read (truncated, corrupt) is skipped for the
    previous one, with a warning; an architecture mismatch is an error.
    """
    steps = [s for s in reversed(self.all_steps()) if step is None or s <= step]
    for candidate in steps:
      try:
        metadata = self._manager.item_metadata(candidate)
        if metadata is None or metadata.get("state") is None:
          raise ValueError("no state metadata")
      except Exception as e:  # noqa: BLE001 (any failure to read means unusable)
        logging.warning("checkpoint step %d in %s is unreadable (%s); trying the one "
                        "before it", candidate, self.directory, e)
        continue
      self.check_architecture(candidate, abstract_state)
      try:
        restored = self._manager.restore(candidate, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001
        logging.warning("checkpoint step %d in %s is unreadable (%s); trying the one "
                        "before it", candidate, self.directory, e)
        continue
      return restored.state, restored.config, restored.meta, candidate
    raise FileNotFoundError(f"no readable checkpoint in {self.directory}")

  def restore_json(self, step: Optional[int] = None) -> tuple[dict, dict]:
    """(config, meta) of `step` (default: the latest), without the state."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    return restored.config, restored.meta

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
