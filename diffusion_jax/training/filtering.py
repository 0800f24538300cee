"""Filtering training data with a trained noisy classifier (the safety step).

`classifier_drop_fn_factory(filter_config, mesh)` returns, for the data's
`DatasetInfo`, a function that flags the examples the classifier (restored
from its training workdir, EMA params) predicts at t = 0 to be one of the
labels to drop with probability above the threshold.
"""
from __future__ import annotations

import pathlib
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from diffusion_jax.data.pipeline import DatasetInfo, to_model_image
from diffusion_jax.training import checkpoint as ckpt_lib


def load_classifier(workdir: str, info: DatasetInfo, mesh):
  """(task, params) of the classifier trained in `workdir` (EMA params)."""
  from diffusion_jax.training import loop, tasks
  checkpointer = ckpt_lib.Checkpointer(str(pathlib.Path(workdir) / "checkpoints"))
  if checkpointer.latest_step() is None:
    raise FileNotFoundError(f"data.filter.classifier_workdir: no checkpoint in {workdir}")
  config = ml_collections.ConfigDict(checkpointer.restore_json()[0])
  if config.task != "classifier":
    raise ValueError(f"data.filter.classifier_workdir {workdir} holds a {config.task!r} "
                     "model, not a classifier")
  task = tasks.make_task(config, info)
  state, _, step = loop.restore_or_init(task, config, mesh, checkpointer, workdir)
  checkpointer.close()
  logging.info("data filter: classifier from %s at step %d", workdir, step)
  params = next(iter(state.ema_params.values())) if state.ema_params else state.params
  return task, params


def classifier_drop_fn_factory(filter_config, mesh) -> Optional[Callable]:
  """None without `classifier_workdir`; else info -> drop_fn(examples) -> bool [n]."""
  if not filter_config.classifier_workdir:
    return None
  drop_labels = np.asarray(filter_config.classifier_drop_labels, np.int32)
  if drop_labels.size == 0:
    raise ValueError("data.filter.classifier_workdir needs classifier_drop_labels")

  def factory(info: DatasetInfo):
    task, params = load_classifier(filter_config.classifier_workdir, info, mesh)
    if drop_labels.max() >= task.num_classes:
      raise ValueError(f"data.filter.classifier_drop_labels {tuple(drop_labels)} out of "
                       f"range for a {task.num_classes}-class classifier")

    @jax.jit
    def drop_probability(images):
      t = jnp.zeros((images.shape[0],), jnp.int32)
      probs = jax.nn.softmax(task.apply(params, images, t), axis=-1)
      return probs[:, drop_labels].sum(-1)

    def drop_fn(examples):
      images = np.stack([to_model_image(e["image"], info.image_size, info.channels)
                         for e in examples])
      return np.asarray(drop_probability(images)) > filter_config.classifier_threshold
    return drop_fn
  return factory
