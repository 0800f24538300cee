"""Checkpoints with Orbax: the only module that talks to Orbax.

A checkpoint step holds the train state (restored into the shardings asked
for, on any mesh) and the config as JSON. Saves are asynchronous; call
`wait()` before the process exits.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import orbax.checkpoint as ocp


class Checkpointer:
  """Save and restore train states under `directory` (one folder per step)."""

  def __init__(self, directory: str, max_to_keep: Optional[int] = 3,
               keep_period: Optional[int] = None):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, keep_period=keep_period, create=True,
        enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "config"))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, config_json: dict) -> bool:
    """Starts an asynchronous save of `state` at `step`; False if skipped."""
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config_json)),
        force=True)

  def restore(self, abstract_state: Any, step: Optional[int] = None):
    """(state, config dict) at `step` (the latest by default).

    `abstract_state` holds `jax.ShapeDtypeStruct`s with the target shardings.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), config=ocp.args.JsonRestore()))
    return restored.state, restored.config

  def restore_config(self, step: Optional[int] = None) -> dict:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    return self._manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore())).config

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
