"""One writer per workdir: a lease that names its holder and is renewed.

A training run holds `WORKDIR/lock.json` for its whole life:

    {"host": ..., "pid": ..., "started": <unix time>, "renewed": <unix time>,
     "token": <random hex>}

- It is taken with an exclusive create (`O_CREAT | O_EXCL`, atomic on local
  and network filesystems alike), by process 0 of the run; the other
  processes learn the outcome from it.
- A background thread renews it every `renew_every` seconds (a new file
  renamed over the old one, so a reader never sees half a lease).
- Another run that finds a live lease stops at once: `WorkdirBusy`, whose
  one line names the holder.
- A lease is stale when its holder is a process of this host that no longer
  exists, or when it has not been renewed for `stale_after` seconds (any
  host: the hosts of a shared filesystem must agree on the time to within
  that). A stale lease is taken over, with a warning.
- A holder whose lease was taken over (it stalled for longer than
  `stale_after`) finds out at its next `check()` and must stop writing.

Modes that only read a workdir (sample, export, eval) take no lock: they
write only new files of their own, atomically, never a checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import socket
import threading
import time
from typing import Optional

from absl import logging

LOCK_FILE = "lock.json"
EXIT_BUSY = 73  # EX_CANTCREAT: another run writes this workdir


class WorkdirBusy(RuntimeError):
  """Another run holds the workdir (or took it over from this one)."""


def _describe(lease: dict) -> str:
  started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.get("started", 0)))
  return f"host {lease.get('host')!r}, pid {lease.get('pid')}, started {started}"


def _read(path: pathlib.Path) -> Optional[dict]:
  """The lease at `path`; None when there is none; {} when it is unreadable
  (a lease being written by an older writer, or damaged: treated as stale
  after `stale_after`, by its file time)."""
  try:
    text = path.read_text()
  except FileNotFoundError:
    return None
  try:
    lease = json.loads(text)
  except json.JSONDecodeError:
    return {}
  return lease if isinstance(lease, dict) else {}


def _process_exists(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's process
    return True
  return True


def is_stale(lease: dict, path: pathlib.Path, stale_after: float,
             now: Optional[float] = None) -> bool:
  """Whether `lease` (read from `path`) may be taken over."""
  now = time.time() if now is None else now
  if (lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int)
      and not _process_exists(lease["pid"])):
    return True
  renewed = lease.get("renewed")
  if not isinstance(renewed, (int, float)):
    try:
      renewed = path.stat().st_mtime
    except FileNotFoundError:
      return True
  return now - renewed > stale_after


class WorkdirLock:
  """The lease on one workdir, held by this process.

  Args:
    workdir: the run's folder (created if absent).
    renew_every: seconds between renewals.
    stale_after: seconds without renewal after which another run may take
      the lease over (several renewals, so a busy filesystem is not taken
      for a dead holder).
  """

  def __init__(self, workdir: str | os.PathLike, renew_every: float = 5.0,
               stale_after: float = 60.0):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self.renew_every, self.stale_after = renew_every, stale_after
    self.token = secrets.token_hex(8)
    self.lease = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                  "token": self.token}
    self._stop = threading.Event()
    self._lost: Optional[dict] = None
    self._thread: Optional[threading.Thread] = None

  def acquire(self) -> WorkdirLock:
    """Takes the lease (or a stale one over) and starts renewing it.

    Raises:
      WorkdirBusy: another live run holds it.
    """
    self.path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # a lease that vanishes between our looks: try again
      if self._create():
        break
      held = _read(self.path)
      if held is None:
        continue
      if not is_stale(held, self.path, self.stale_after):
        raise WorkdirBusy(f"{self.path.parent} is in use by another training run "
                          f"({_describe(held)}); wait for it to end, or use another "
                          f"--workdir (its lease goes stale {self.stale_after:.0f} s after "
                          "its last renewal)")
      self._take_over(held)
    else:
      raise WorkdirBusy(f"could not take the lock {self.path}: it keeps changing hands")
    self._thread = threading.Thread(target=self._renew_loop, name="workdir-lock",
                                    daemon=True)
    self._thread.start()
    return self

  def _create(self) -> bool:
    """Writes our lease if there is none (atomically); False if one exists."""
    try:
      fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump({**self.lease, "renewed": time.time()}, f)
      f.flush()
      os.fsync(f.fileno())
    return True

  def _take_over(self, stale: dict) -> None:
    """Moves a stale lease aside (one taker wins the rename); if what moved
    is not the lease judged stale (someone took it over first), puts it
    back and refuses."""
    aside = self.path.with_name(f"{LOCK_FILE}.taken-{self.token}")
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return  # gone already: the next exclusive create decides
    moved = _read(aside) or {}
    if moved.get("token") != stale.get("token"):
      with contextlib.suppress(FileExistsError):  # a third run created one meanwhile
        os.link(aside, self.path)
      os.unlink(aside)
      raise WorkdirBusy(f"{self.path.parent} was just taken by another training run "
                        f"({_describe(moved)})")
    os.unlink(aside)
    logging.warning("took over the stale lock of %s (%s): its run stopped renewing it",
                    self.path.parent, _describe(stale))

  def _renew_loop(self) -> None:
    while not self._stop.wait(self.renew_every):
      try:
        self.renew()
      except OSError as e:  # a full or unreachable disk: try again, lose it if stale
        logging.warning("could not renew the lock %s: %s", self.path, e)

  def renew(self) -> None:
    """Rewrites `renewed` if we still hold the lease; notes it lost if not."""
    held = _read(self.path)
    if held is None or held.get("token") != self.token:
      if self._lost is None:
        self._lost = held or {}
        logging.error("lost the lock of %s to %s", self.path.parent,
                      _describe(held or {}))
      return
    tmp = self.path.with_name(f"{LOCK_FILE}.{self.token}.tmp")
    tmp.write_text(json.dumps({**self.lease, "renewed": time.time()}))
    os.replace(tmp, self.path)

  def check(self) -> None:
    """Raises WorkdirBusy if another run took the lease over from us."""
    if self._lost is not None:
      raise WorkdirBusy(f"another run took over the lock of {self.path.parent} "
                        f"({_describe(self._lost)}) while this one had stalled; "
                        "this run stops without writing")

  def release(self) -> None:
    """Stops renewing and removes the lease if it is still ours."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=2 * self.renew_every)
      self._thread = None
    held = _read(self.path)
    if held is not None and held.get("token") == self.token:
      with contextlib.suppress(FileNotFoundError):
        self.path.unlink()


class NoLock:
  """The stand-in on processes other than 0, which hold no lease."""

  def check(self) -> None:
    pass

  def release(self) -> None:
    pass


def lock_workdir(workdir, renew_every: float = 5.0, stale_after: float = 60.0):
  """Process 0 takes the workdir's lease; every process learns the outcome.

  Returns the lock (process 0) or a `NoLock` (the others). Raises
  WorkdirBusy on every process when process 0 could not take it.
  """
  import jax
  error, lock = "", NoLock()
  if jax.process_index() == 0:
    try:
      lock = WorkdirLock(workdir, renew_every, stale_after).acquire()
    except WorkdirBusy as e:
      error = str(e)
  if jax.process_count() > 1:
    import numpy as np
    from jax.experimental import multihost_utils
    refused = int(multihost_utils.broadcast_one_to_all(np.int32(bool(error))))
    if refused and not error:
      error = "process 0 could not lock the workdir (its error says why)"
  if error:
    raise WorkdirBusy(error)
  return lock
