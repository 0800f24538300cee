"""Metrics to TensorBoard (tensorboardX) and the log, from process 0 only."""
from __future__ import annotations

import pathlib
import sys
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging


def _summary_writer():
  """tensorboardX's SummaryWriter class, imported without PyTorch.

  tensorboardX imports torch where it is installed (the `convert` extra),
  only to accept torch tensors, which we never pass: 1.5 s and a few hundred
  MB at every training start. While it imports, `import torch` raises
  ImportError, which tensorboardX expects and catches.
  """
  hidden = "torch" not in sys.modules
  if hidden:
    sys.modules["torch"] = None
  try:
    from tensorboardX import SummaryWriter
  finally:
    if hidden:
      del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:
  """Scalars, hyper-parameters and images; silent on processes other than 0."""

  def __init__(self, logdir: str | pathlib.Path):
    self.active = jax.process_index() == 0
    self._tb = None
    if self.active:
      self._tb = _summary_writer()(str(logdir))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    if not self.active:
      return
    flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
            for k, v in hparams.items()}
    self._tb.add_text("hparams", "\n".join(f"    {k}: {v}" for k, v in sorted(flat.items())), 0)
    logging.info("hyper-parameters: %s", flat)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.active:
      return
    for name, value in scalars.items():
      self._tb.add_scalar(name, float(value), step)
    logging.info("step %d: %s", step, ", ".join(f"{k}={float(v):.5g}"
                                                 for k, v in sorted(scalars.items())))

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """image: [H, W, 3] uint8."""
    if self.active:
      self._tb.add_image(name, image, step, dataformats="HWC")

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


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
