"""What a model knows about its data, and how an image becomes its input.

Free of the dataset libraries (TFDS, grain), so that inference, loading and
the train step import it without them; `pipeline` re-exports both names.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model needs to know about the data.

  Attributes:
    image_size, channels: of the images the model takes.
    num_classes: of the class label, or None without one.
    train_examples: the size of the training split.
    attributes: ((name, number of values), ...) of the int features a
      clean-image evaluator predicts (`builders.metadata`); () when unknown
      (descriptions saved before they were recorded).
    captions: whether examples have a "caption" text (False in descriptions
      saved before it was recorded).
  """
  image_size: int
  channels: int
  num_classes: Optional[int]
  train_examples: int
  attributes: tuple = ()
  captions: bool = False

  def __post_init__(self):  # JSON gives lists back: keep it hashable
    object.__setattr__(self, "attributes",
                       tuple((str(name), int(count)) for name, count in self.attributes))



def to_model_image(image: np.ndarray, image_size: int, channels: int) -> np.ndarray:
  """uint8 [h, w, c] -> float32 [S, S, channels] in [-1, 1] (center crop, bilinear)."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[:2] != (image_size, image_size):
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top:top + side, left:left + side]
    pil = Image.fromarray(crop[..., 0] if crop.shape[-1] == 1 else crop)
    image = np.asarray(pil.resize((image_size, image_size), Image.BILINEAR))
    image = image[..., None] if image.ndim == 2 else image
  if image.shape[-1] != channels:
    if image.shape[-1] == 1:
      image = np.repeat(image, channels, axis=-1)
    elif channels == 1:
      image = np.round(image.mean(-1, keepdims=True))
    else:
      raise ValueError(f"cannot turn {image.shape[-1]}-channel images into {channels}")
  return image.astype(np.float32) / 127.5 - 1.0
