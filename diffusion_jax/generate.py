"""Sampling from a trained diffusion model: class grids, PNG and .npz outputs."""
from __future__ import annotations

import pathlib
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import guidance, platform, sampling, schedules, validation, visualize


def make_sample_fn(task, sample_config, batch_size: int):
  """A jitted `fn(params, rng, labels [B]) -> images [B, S, S, C]` in [-1, 1].

  Uses `sample_config`: method, steps (a respacing spec), eta, guidance_scale
  (classifier-free, GLIDE's s; needs a model trained with a null class),
  clip_denoised.
  """
  fast = schedules.respace(task.schedule, sample_config.steps)
  shape = (batch_size,) + tuple(task.image_shape)
  scale = float(sample_config.guidance_scale)
  if scale != 1.0 and task.null_label is None:
    raise ValueError("sample.guidance_scale != 1 needs a model trained with "
                     "train.label_dropout > 0 (a null class for classifier-free guidance)")

  def sample_fn(params, rng, labels):
    def model_fn(x, t, **cond):
      return task.apply(params, x, t, **cond)
    if scale != 1.0:
      model_fn = guidance.classifier_free(model_fn, scale, {"y": task.null_label})
    cond = {"y": labels} if task.num_classes else {}
    return sampling.sample(model_fn, fast, shape, rng, method=sample_config.method,
                           eta=sample_config.eta, clip_denoised=sample_config.clip_denoised,
                           parameterization=task.parameterization,
                           variance=task.variance, **cond)
  return jax.jit(sample_fn, compiler_options=platform.compiler_options())


def class_grid_labels(num_classes: Optional[int], per_class: int,
                      labels: Optional[Sequence[int]] = None) -> np.ndarray:
  """[rows, per_class] labels: one row per class (or per label asked for)."""
  rows = list(labels) if labels else list(range(num_classes or 1))
  if num_classes:
    rows = validation.check_labels(rows, num_classes, name="sample.labels")
  return np.repeat(np.asarray(rows, np.int32)[:, None], per_class, axis=1)


def sample_grid(task, params, sample_config, rng, labels_grid: np.ndarray) -> np.ndarray:
  """Images [rows, cols, S, S, C] for a [rows, cols] label grid."""
  rows, cols = labels_grid.shape
  sample_fn = make_sample_fn(task, sample_config, rows * cols)
  images = sample_fn(params, rng, jnp.asarray(labels_grid.reshape(-1)))
  return np.asarray(images).reshape((rows, cols) + tuple(task.image_shape))


def write_samples(images: np.ndarray, labels_grid: np.ndarray, path: pathlib.Path,
                  row_titles: Optional[Sequence[str]] = None) -> pathlib.Path:
  """Writes `path`.png (the grid) and `path`.npz (uint8 images and labels)."""
  path = pathlib.Path(path)
  if path.suffix in (".png", ".npz"):
    path = path.with_suffix("")
  path.parent.mkdir(parents=True, exist_ok=True)
  png, npz = path.with_name(path.name + ".png"), path.with_name(path.name + ".npz")
  visualize.image_grid(images, row_titles).save(png)
  np.savez(npz, images=visualize.to_uint8(images), labels=labels_grid)
  return png
