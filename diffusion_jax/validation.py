"""Input validation in one place: images, masks and labels at the edges.

The CLI, the sampling API and the editing features call these, so a bad
input is one clear `ValueError` naming the problem, never an error from deep
inside XLA. Library conventions: images NHWC float32 in [-1, 1] (uint8
[0, 255] accepted and converted); masks [B, H, W, 1], 1 = keep, 0 = fill.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def check_images(images, *, image_size: Optional[int] = None,
                 channels: Optional[int] = None, name: str = "images") -> np.ndarray:
  """Validates a batch of images and returns it as float32 [B, H, W, C] in [-1, 1].

  Args:
    images: uint8 [0, 255] or float [-1, 1], shape [B, H, W, C] ([H, W, C] is
      taken as a batch of one).
    image_size: the H = W the model needs, if fixed.
    channels: the C the model needs, if fixed.
    name: how the error messages call the argument.
  """
  array = np.asarray(images)
  if array.ndim == 3:
    array = array[None]
  if array.ndim != 4:
    raise ValueError(f"{name} must be [B, H, W, C] (channels last); got shape {array.shape}")
  _, height, width, got_channels = array.shape
  if image_size is not None and (height, width) != (image_size, image_size):
    raise ValueError(f"{name} are {height}x{width} but the model takes "
                     f"{image_size}x{image_size}")
  if channels is not None and got_channels != channels:
    raise ValueError(f"{name} have {got_channels} channels but the model takes {channels} "
                     "(images are channels last: [B, H, W, C])")
  if array.dtype == np.uint8:
    return array.astype(np.float32) / 127.5 - 1.0
  if not np.issubdtype(array.dtype, np.floating):
    raise ValueError(f"{name} must be uint8 [0, 255] or float [-1, 1]; got {array.dtype}")
  if not np.all(np.isfinite(array)):
    raise ValueError(f"{name} contain NaN or infinite values")
  low, high = float(array.min()), float(array.max())
  if low < -1.001 or high > 1.001:
    hint = " (they look like [0, 255]: pass uint8 or scale to [-1, 1])" if high > 2 else ""
    raise ValueError(f"{name} must lie in [-1, 1]; got values in [{low:.4g}, {high:.4g}]{hint}")
  return array.astype(np.float32)


def check_mask(mask, images_shape) -> np.ndarray:
  """Validates an inpainting mask: [B, H, W, 1] of 0 (fill) and 1 (keep), float32."""
  array = np.asarray(mask)
  batch, height, width = images_shape[:3]
  if array.ndim == 3 and array.shape == (batch, height, width):
    array = array[..., None]
  if array.shape != (batch, height, width, 1):
    raise ValueError(f"mask must have shape [B, H, W, 1] = {(batch, height, width, 1)} "
                     f"(1 = keep, 0 = fill); got {array.shape}")
  values = np.unique(array)
  if not np.all(np.isin(values, (0, 1))):
    raise ValueError(f"mask values must be 0 (fill) or 1 (keep); got {values[:5].tolist()}")
  return array.astype(np.float32)


def check_labels(labels, num_classes: Optional[int], batch_size: Optional[int] = None,
                 name: str = "labels") -> np.ndarray:
  """Validates class labels: int32 [B], each in [0, num_classes)."""
  if num_classes is None:
    raise ValueError(f"this model is not class-conditional: it takes no {name}")
  array = np.asarray(labels)
  if array.ndim == 0:
    array = np.full((batch_size or 1,), array)
  if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f"{name} must be a 1-D array of integers; got {array.dtype} {array.shape}")
  if batch_size is not None and array.shape[0] != batch_size:
    raise ValueError(f"{len(array)} {name} for a batch of {batch_size}")
  bad = array[(array < 0) | (array >= num_classes)]
  if bad.size:
    raise ValueError(f"{name} {sorted(set(bad.tolist()))[:5]} out of range: the model "
                     f"has {num_classes} classes (0 to {num_classes - 1})")
  return array.astype(np.int32)
