"""Metrics to TensorBoard (tensorboardX's event files) and the log, from
process 0 only."""
from __future__ import annotations

import pathlib
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging


def _tensorboardx():
  """tensorboardX's event-file writer, summary builders and Event proto,
  imported without PyTorch.

  tensorboardX imports torch where it is installed (the `convert` extra),
  only to accept torch tensors, which we never pass: 1.5 s and a few hundred
  MB at every training start. While it imports, `import torch` raises
  ImportError, which tensorboardX expects and catches.
  """
  hidden = "torch" not in sys.modules
  if hidden:
    sys.modules["torch"] = None
  try:
    from tensorboardX import summary
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto.event_pb2 import Event
  finally:
    if hidden:
      del sys.modules["torch"]
  return EventsWriter, summary, Event


class MetricWriter:
  """Scalars, hyper-parameters and images; silent on processes other than 0.

  Writes synchronously and flushes at each call, so a full disk or an I/O
  error is an `OSError` here, in the training loop. (tensorboardX's
  `SummaryWriter` writes from a thread: when that thread dies on a full disk
  its bounded queue fills and the next write blocks the run forever.)
  """

  def __init__(self, logdir: str | pathlib.Path):
    self.logdir = pathlib.Path(logdir)
    self.active = jax.process_index() == 0
    self._events = None
    if self.active:
      events_writer, self._summary, self._event = _tensorboardx()
      self.logdir.mkdir(parents=True, exist_ok=True)
      self._events = events_writer(str(self.logdir / "events"))

  def _write(self, step: int, summaries) -> None:
    for summary in summaries:
      self._events.write_event(self._event(wall_time=time.time(), step=step, summary=summary))
    self._events.flush()

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    if not self.active:
      return
    flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
            for k, v in hparams.items()}
    text = "\n".join(f"    {k}: {v}" for k, v in sorted(flat.items()))
    self._write(0, [self._summary.text("hparams", text)])
    logging.info("hyper-parameters: %s", flat)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.active:
      return
    logging.info("step %d: %s", step, ", ".join(f"{k}={float(v):.5g}"
                                                 for k, v in sorted(scalars.items())))
    self._write(step, [self._summary.scalar(name, float(value))
                       for name, value in scalars.items()])

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """image: [H, W, 3] uint8."""
    if self.active:
      self._write(step, [self._summary.image(name, image, dataformats="HWC")])

  def close(self) -> None:
    if self._events is not None:
      events, self._events = self._events, None
      events.close()


def flatten_config(config, prefix: str = "") -> dict:
  """A ConfigDict as {"model.channels": 64, ...}."""
  flat = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if hasattr(value, "items"):
      flat.update(flatten_config(value, name + "."))
    else:
      flat[name] = value
  return flat
