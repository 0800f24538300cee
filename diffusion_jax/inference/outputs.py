"""Sample files: PNG grids with one row per class, and guided-diffusion's
`.npz` of N samples (`arr_0` uint8 images [N, H, W, C], `arr_1` labels [N])."""
from __future__ import annotations

import os
import pathlib
from typing import Optional, Sequence

import jax
import numpy as np
import tqdm

from diffusion_jax import validation, visualize
from diffusion_jax.inference.sampler import Sampler, SampleSettings


def grid_labels(num_classes: Optional[int], per_class: int,
                labels: Optional[Sequence[int]] = None) -> np.ndarray:
  """[rows, per_class] labels: one row per class (or per label asked for);
  one row of zeros for a model without classes."""
  rows = list(labels) if labels else list(range(num_classes or 1))
  if num_classes:
    rows = validation.check_labels(rows, num_classes, name="sample.labels")
  return np.repeat(np.asarray(rows, np.int32)[:, None], per_class, axis=1)


def split_prompts(text: str) -> Optional[list[str]]:
  """`sample.prompts` ("a red circle|a blue square") as a list, None if empty."""
  prompts = [p.strip() for p in str(text).split("|") if p.strip()]
  return prompts or None


def takes_prompts(spec) -> bool:
  return any(c.arg == "prompts" for c in spec.conditioning)


def grid_layout(spec, sample_config, label_classes: Optional[int] = None):
  """(labels [rows, per_class], prompts [rows] or None): one row per prompt
  of `sample.prompts` for a text-to-image model, else one per class (or
  per `sample.labels`).

  Raises:
    ValueError: a text-to-image model without `sample.prompts`.
  """
  per_class = sample_config.per_class
  if takes_prompts(spec):
    prompts = split_prompts(sample_config.prompts)
    if prompts is None:
      raise ValueError("a text-to-image model needs sample.prompts "
                       '("a red circle|a blue square": one grid row each)')
    return np.zeros((len(prompts), per_class), np.int32), prompts
  return grid_labels(label_classes or spec.num_classes, per_class,
                     list(sample_config.labels)), None


def _labelled(spec, guide) -> bool:
  """Whether samples take labels: a class-conditional model, or a classifier's target."""
  return bool(spec.num_classes) or (guide is not None and guide.target.arg == "labels")


def _cond(spec, guide, labels, size, prompts=None) -> dict:
  given = {"labels": labels} if _labelled(spec, guide) else {}
  if prompts is not None:
    given["prompts"] = list(prompts)
  return spec.prepare_cond(given, size, extra=() if guide is None else (guide.target,))


def _after(spec, prompts_after, size):
  return None if prompts_after is None else spec.prepare_after(list(prompts_after), size)


def sample_grid(sampler: Sampler, params, settings: SampleSettings, seed: int,
                labels_grid: np.ndarray, guide=None, prompts=None,
                prompts_after=None) -> np.ndarray:
  """Images [rows, cols, S, S, C] for a [rows, cols] label grid, or one row
  per prompt (guided by `guide`, a classifier or CLIP guide, if given;
  `prompts_after` [rows], a prompt schedule's later prompts)."""
  spec = sampler.spec
  rows, cols = labels_grid.shape
  per_sample = lambda row_values: [p for p in row_values for _ in range(cols)]  # noqa: E731
  cond = _cond(spec, guide, labels_grid.reshape(-1), rows * cols,
               None if prompts is None else per_sample(prompts))
  after = None if prompts_after is None else _after(spec, per_sample(prompts_after),
                                                    rows * cols)
  images = sampler.sample(params, jax.random.PRNGKey(seed), cond, settings, rows * cols,
                          guide, after)
  return images.reshape((rows, cols) + tuple(spec.image_shape))


def write_grid(images: np.ndarray, labels_grid: np.ndarray, path: str | pathlib.Path,
               row_titles: Optional[Sequence[str]] = None,
               prompts: Optional[Sequence[str]] = None) -> pathlib.Path:
  """Writes `path`.png (the grid) and `path`.npz (uint8 images, labels, and
  the rows' prompts for a text-to-image model)."""
  path = pathlib.Path(path)
  if path.suffix in (".png", ".npz"):
    path = path.with_suffix("")
  path.parent.mkdir(parents=True, exist_ok=True)
  png, npz = path.with_name(path.name + ".png"), path.with_name(path.name + ".npz")
  partial = path.with_name(f".{path.name}.writing-{os.getpid()}")  # renamed when complete
  visualize.image_grid(images, row_titles).save(partial, format="PNG")
  os.replace(partial, png)
  extra = {} if prompts is None else {"prompts": np.asarray(list(prompts))}
  with open(partial, "wb") as f:
    np.savez(f, images=visualize.to_uint8(images), labels=labels_grid, **extra)
  os.replace(partial, npz)
  return png


def many_labels(num_classes: Optional[int], num: int, seed: int,
                labels: Optional[Sequence[int]] = None) -> Optional[np.ndarray]:
  """[num] labels: `labels` repeated in turn, or uniformly random classes
  (guided-diffusion's image_sample.py); None for a model without classes."""
  if not num_classes:
    return None
  if labels:
    return np.resize(validation.check_labels(list(labels), num_classes,
                                             name="sample.labels"), num)
  return np.random.default_rng(seed).integers(0, num_classes, num).astype(np.int32)


def many_prompts(prompts: Optional[Sequence[str]], num: int) -> Optional[list[str]]:
  """[num] prompts: `prompts` repeated in turn (None stays None)."""
  return None if prompts is None else [prompts[i % len(prompts)] for i in range(num)]


def sample_many(sampler: Sampler, params, settings: SampleSettings, num: int,
                batch_size: int, seed: int, labels: Optional[np.ndarray] = None,
                progress: bool = True, guide=None,
                prompts: Optional[Sequence[str]] = None,
                prompts_after: Optional[Sequence[str]] = None) -> np.ndarray:
  """uint8 images [num, S, S, C], drawn `batch_size` at a time.

  Batch i uses the key fold_in(PRNGKey(seed), i), so the same seed, labels
  (or prompts, [num] each) and batch size give the same images.
  """
  key = jax.random.PRNGKey(seed)
  out = []
  bar = tqdm.tqdm(total=num, desc="sampling", unit="image",
                  disable=not progress or jax.process_index() != 0)
  for index, start in enumerate(range(0, num, batch_size)):
    size = min(batch_size, num - start)
    chunk = slice(start, start + size)
    cond = _cond(sampler.spec, guide, _part(labels, chunk), size, _part(prompts, chunk))
    after = _after(sampler.spec, _part(prompts_after, chunk), size)
    images = sampler.sample(params, jax.random.fold_in(key, index), cond, settings, size,
                            guide, after)
    out.append(visualize.to_uint8(images))
    bar.update(size)
  bar.close()
  return np.concatenate(out)


def _part(values, chunk: slice):
  return None if values is None else values[chunk]


def write_npz(images: np.ndarray, labels: Optional[np.ndarray],
              path: str | pathlib.Path) -> pathlib.Path:
  """guided-diffusion's layout: arr_0 uint8 [N, H, W, C], arr_1 labels [N]."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = [images] if labels is None else [images, np.asarray(labels, np.int32)]
  np.savez(path, *arrays)
  return path
