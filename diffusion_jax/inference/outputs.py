"""Sample files: PNG grids with one row per class, and guided-diffusion's
`.npz` of N samples (`arr_0` uint8 images [N, H, W, C], `arr_1` labels [N])."""
from __future__ import annotations

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


def _labelled(spec, guide) -> bool:
  """Whether samples take labels: a class-conditional model, or a guide's target."""
  return bool(spec.num_classes) or guide is not None


def _cond(spec, guide, labels, size) -> dict:
  given = {"labels": labels} if _labelled(spec, guide) else {}
  return spec.prepare_cond(given, size, extra=() if guide is None else (guide.target,))


def sample_grid(sampler: Sampler, params, settings: SampleSettings, seed: int,
                labels_grid: np.ndarray, guide=None) -> np.ndarray:
  """Images [rows, cols, S, S, C] for a [rows, cols] label grid (guided by
  `guide`, a `guide.ClassifierGuide`, if given)."""
  spec = sampler.spec
  rows, cols = labels_grid.shape
  cond = _cond(spec, guide, labels_grid.reshape(-1), rows * cols)
  images = sampler.sample(params, jax.random.PRNGKey(seed), cond, settings, rows * cols,
                          guide)
  return images.reshape((rows, cols) + tuple(spec.image_shape))


def write_grid(images: np.ndarray, labels_grid: np.ndarray, path: str | pathlib.Path,
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


def sample_many(sampler: Sampler, params, settings: SampleSettings, num: int,
                batch_size: int, seed: int, labels: Optional[np.ndarray] = None,
                progress: bool = True, guide=None) -> np.ndarray:
  """uint8 images [num, S, S, C], drawn `batch_size` at a time.

  Batch i uses the key fold_in(PRNGKey(seed), i), so the same seed, labels
  and batch size give the same images.
  """
  key = jax.random.PRNGKey(seed)
  out = []
  bar = tqdm.tqdm(total=num, desc="sampling", unit="image",
                  disable=not progress or jax.process_index() != 0)
  for index, start in enumerate(range(0, num, batch_size)):
    size = min(batch_size, num - start)
    chunk = None if labels is None else labels[start:start + size]
    cond = _cond(sampler.spec, guide, chunk, size)
    images = sampler.sample(params, jax.random.fold_in(key, index), cond, settings, size,
                            guide)
    out.append(visualize.to_uint8(images))
    bar.update(size)
  bar.close()
  return np.concatenate(out)


def write_npz(images: np.ndarray, labels: Optional[np.ndarray],
              path: str | pathlib.Path) -> pathlib.Path:
  """guided-diffusion's layout: arr_0 uint8 [N, H, W, C], arr_1 labels [N]."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = [images] if labels is None else [images, np.asarray(labels, np.int32)]
  np.savez(path, *arrays)
  return path
