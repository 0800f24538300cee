"""Sampling from a trained diffusion model: class grids, PNG and .npz outputs."""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from diffusion_jax import guidance, platform, sampling, schedules, validation, visualize


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """What a compiled sampler is specialised on, from a config's `sample` section."""
  method: str
  steps: str  # a respacing spec, e.g. "100" or "ddim50"
  eta: float
  guidance_scale: float
  clip_denoised: bool

  @classmethod
  def of(cls, sample_config) -> "SampleSettings":
    return cls(str(sample_config.method), str(sample_config.steps),
               float(sample_config.eta), float(sample_config.guidance_scale),
               bool(sample_config.clip_denoised))


def make_sample_fn(task, sample_config, batch_size: int):
  """A jitted `fn(params, rng, labels [B]) -> images [B, S, S, C]` in [-1, 1].

  Uses `sample_config`: method, steps (a respacing spec), eta, guidance_scale
  (classifier-free, GLIDE's s; needs a model trained with a null class),
  clip_denoised. The function is kept on `task` per settings and batch size,
  so asking again (each sample grid of a run, each `Bundle.sample`) reuses
  its compilation.
  """
  settings = SampleSettings.of(sample_config)
  if settings.guidance_scale != 1.0 and task.null_label is None:
    raise ValueError("sample.guidance_scale != 1 needs a model trained with "
                     "train.label_dropout > 0 (a null class for classifier-free guidance)")
  batch_size = int(batch_size)
  return _kept(task, ("sample", settings, batch_size),
               lambda: _build_sample_fn(task, settings, batch_size))


def make_encode_fn(task, steps: str):
  """A jitted `fn(params, x0 [B, S, S, C], labels [B]) -> x_T`: the DDIM
  inversion over the respaced `steps`, kept on `task` like `make_sample_fn`."""
  return _kept(task, ("encode", str(steps)), lambda: _build_encode_fn(task, str(steps)))


def _kept(task, key, build):
  """task.compiled[key], built on first use."""
  if key not in task.compiled:
    task.compiled[key] = build()
  return task.compiled[key]


def _model_and_cond(task, params, labels):
  """(model_fn(x, t, **cond), cond) for the task's network with `params`."""
  def model_fn(x, t, **cond):
    return task.apply(params, x, t, **cond)
  return model_fn, ({"y": labels} if task.num_classes else {})


def _build_sample_fn(task, settings: SampleSettings, batch_size: int):
  fast = schedules.respace(task.schedule, settings.steps)
  shape = (batch_size,) + tuple(task.image_shape)

  def sample_fn(params, rng, labels):
    model_fn, cond = _model_and_cond(task, params, labels)
    if settings.guidance_scale != 1.0:
      model_fn = guidance.classifier_free(model_fn, settings.guidance_scale,
                                          {"y": task.null_label})
    return sampling.sample(model_fn, fast, shape, rng, method=settings.method,
                           eta=settings.eta, clip_denoised=settings.clip_denoised,
                           parameterization=task.parameterization,
                           variance=task.variance, **cond)
  return platform.jit(sample_fn)


def _build_encode_fn(task, steps: str):
  fast = schedules.respace(task.schedule, steps)

  def encode_fn(params, x0, labels):
    model_fn, cond = _model_and_cond(task, params, labels)
    return sampling.ddim_encode(model_fn, fast, x0, parameterization=task.parameterization,
                                variance=task.variance, **cond)
  return platform.jit(encode_fn)


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
