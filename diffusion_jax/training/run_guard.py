"""Keeping a run whole: same-config resume, preemption, non-finite stops.

- `check_same_run`: a workdir holds one run; resuming it with a config that
  changes the model, diffusion, data or optimizer is refused (changing only
  durations, logging, sampling or the mesh is allowed).
- `PreemptionWatcher`: SIGTERM (or the multi-host preemption sync point)
  asks the loop to save at the current step and exit with `EXIT_PREEMPTED`.
- `NonFiniteError`: too many consecutive steps skipped for non-finite values.
"""
from __future__ import annotations

import signal
import threading

import jax
from absl import logging

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the run saved itself; rerun the command to resume
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

# Fields that may change between the runs of one workdir.
ADJUSTABLE = ("resume", "mesh.", "sample.", "data.data_dir", "train.init_from", "train.num_steps",
              "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
              "train.keep_every", "train.sample_every", "train.max_nonfinite_steps",
              "train.lock_renew_every", "train.lock_stale_after")


class Preempted(Exception):
  """The run saved a checkpoint at `step` and stopped on a preemption notice."""

  def __init__(self, step: int):
    super().__init__(f"preempted: saved a checkpoint at step {step}; run the same "
                     "command again to resume")
    self.step = step


class NonFiniteError(RuntimeError):
  """Too many consecutive steps had a non-finite loss or gradient."""


def _flatten(tree, prefix=""):
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _normalise(value):
  return list(value) if isinstance(value, (list, tuple)) else value


_MISSING = object()


def config_differences(saved: dict, current: dict, defaults: dict | None = None) -> list[str]:
  """"name: saved -> current" for each field that may not change within a run.

  A field the saved config lacks (one a later version of the package added)
  counts as its value in `defaults`, so upgrading mid-run does not refuse
  the resume while the new field keeps its default.
  """
  old, new = _flatten(saved), _flatten(current)
  fallback = _flatten(defaults or {})
  changed = []
  for name in sorted(set(old) | set(new)):
    if any(name == a or (a.endswith(".") and name.startswith(a)) for a in ADJUSTABLE):
      continue
    before = old.get(name, fallback.get(name, _MISSING))
    if before is _MISSING or _normalise(before) != _normalise(new.get(name)):
      changed.append(f"{name}: {old.get(name)!r} -> {new.get(name)!r}")
  return changed


def check_same_run(saved: dict, current: dict, workdir: str,
                   defaults: dict | None = None) -> None:
  """Raises ValueError when `current` is not a continuation of the saved run."""
  changed = config_differences(saved, current, defaults)
  if changed:
    raise ValueError(
        f"{workdir} holds a run of a different config ({'; '.join(changed[:3])}"
        f"{'; ...' if len(changed) > 3 else ''}): use a new --workdir, or "
        "--config.resume=False to start over there (the old checkpoints are kept aside)")


class PreemptionWatcher:
  """Notices SIGTERM (and, on several processes, agrees on the step)."""

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint at the end of this step")
    self._flag.set()

  def should_stop(self, step: int) -> bool:
    """True at the first step boundary after a notice, on every process alike."""
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      try:  # the coordination service's own preemption notice (SIGTERM)
        if multihost_utils.reached_preemption_sync_point(step):
          return True
      except RuntimeError:  # no preemption service in this runtime
        pass
      flags = multihost_utils.process_allgather(
          jax.numpy.asarray(self._flag.is_set(), jax.numpy.int32))
      return bool(flags.max())
    return self._flag.is_set()

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
