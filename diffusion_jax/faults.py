"""Fault injection for the reliability tests: SIGKILL this process at a
chosen point of a checkpoint save, as a node failure would.

Set `DIFFUSION_JAX_KILL_AT=POINT@STEP` in a run's environment (never set in
normal runs; then nothing here is installed). Points, in the order a save
passes them:

- `writing`: while the step's arrays are being written (the asynchronous
  save has started; its temporary folder exists);
- `before_rename`: every item written and renamed inside the temporary step
  folder, before that folder is renamed to the step;
- `before_delete`: after the rename, before older checkpoints beyond
  `train.keep_checkpoints` are deleted.

The two later points patch Orbax (pinned, < 0.13) at the functions that
rename and delete; `install` fails loudly if they have moved.
"""
from __future__ import annotations

import os
import signal
from typing import Optional

ENV = "DIFFUSION_JAX_KILL_AT"
POINTS = ("writing", "before_rename", "before_delete")


def _target() -> Optional[tuple[str, int]]:
  value = os.environ.get(ENV, "")
  if not value:
    return None
  point, _, step = value.partition("@")
  if point not in POINTS or not step.isdigit():
    raise ValueError(f"{ENV}={value!r}: expected POINT@STEP with POINT one of {POINTS}")
  return point, int(step)


def _kill() -> None:
  os.kill(os.getpid(), signal.SIGKILL)


def install(manager) -> None:
  """Arms the `before_rename` and `before_delete` points on an Orbax
  CheckpointManager (when the environment asks for one)."""
  target = _target()
  if target is None:
    return
  point, step = target
  if point == "before_rename":
    from orbax.checkpoint._src.path import atomicity
    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *args, **kwargs):
      if self.get_final().name == str(step):  # the step folder, not an item's
        _kill()
      return await original(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize
  elif point == "before_delete":
    deleter = manager._checkpoint_deleter  # noqa: SLF001 (a test hook on a pinned version)
    original_delete = deleter.delete_steps

    def delete_steps(steps):
      if steps and manager.latest_step() == step:
        _kill()
      return original_delete(steps)

    deleter.delete_steps = delete_steps


def after_save_started(step: int) -> None:
  """The `writing` point: called as soon as a save of `step` has started."""
  target = _target()
  if target == ("writing", step):
    _kill()
