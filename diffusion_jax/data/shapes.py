"""Coloured shapes on a 3x3 grid, drawn with numpy: a dataset with no download.

Every example is a pure function of `(seed, index)`: `render_example` draws
the scene (shapes, colors, sizes, grid cells, small offsets inside the cell,
background color) and the caption from `np.random.default_rng([seed, index,
num_objects])`, then renders it at the asked size (4x supersampled, averaged
down for anti-aliasing). The scene does not depend on the image size, so
`render_example(s, i, 16, n)` and `render_example(s, i, 64, n)` show the same
objects: low- and high-resolution pairs for super-resolution.

Labels: `label = shape * len(COLORS) + color` (18 classes), of the only
object, or of the larger one when there are two. `label_name(label)` gives
"red circle".

The TFDS builder of these scenes, and of `scenes.py`'s, is
`shapes_tfds.Shapes`.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow", "magenta", "cyan")
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right", "left", "center", "right",
             "bottom left", "bottom", "bottom right")
NUM_CLASSES = len(SHAPES) * len(COLORS)
IMAGE_SIZES = (16, 32, 64)
# `num_objects` of the scenes configs ("scenes_16" ...): 0 to 3 objects,
# drawn by `scenes.py`.
SCENES = -1
# (objects, low-res size, image size) of the upsampling configs.
UPSAMPLING = ((1, 16, 32), (2, 32, 64), (SCENES, 16, 32))
# The int64 attributes of each object; the second object's carry a "2".
ATTRIBUTES = ("shape", "color", "size", "position")
# The number of values of each attribute.
ATTRIBUTE_CLASSES = {"shape": len(SHAPES), "color": len(COLORS), "size": len(SIZES),
                     "position": len(POSITIONS)}

# Saturated RGB per color: each has a channel >= 200 (minus jitter), while
# backgrounds keep every channel below ~100, so no object melts into it.
COLOR_RGB = np.array([(225, 35, 35), (40, 195, 60), (45, 90, 240),
                      (240, 215, 35), (215, 45, 215), (40, 215, 225)], np.float32)

SPLIT_SIZES = {"train": 20_000, "validation": 1_000, "test": 1_000}
# One seed per split: splits are disjoint streams of scenes.
SPLIT_SEEDS = {"train": 1, "validation": 2, "test": 3}

_EXTENT = (0.6, 0.9)  # bounding-box side / cell side, per size
_JITTER = tuple(0.8 * (1 - e) / 2 for e in _EXTENT)  # max center offset, in cells
_COLOR_JITTER = 12.0  # per channel, uniform
_BACKGROUND_LEVEL = (20.0, 70.0)  # gray level range
_BACKGROUND_TINT = 10.0  # per channel, uniform
_NOISE_STD = 3.0  # per pixel, the light texture
_SUPERSAMPLE = 4

# Phrases for "where", by position index.
_WHERE = ("in the top left", "at the top", "in the top right", "on the left",
          "in the center", "on the right", "in the bottom left", "at the bottom",
          "in the bottom right")
ONE_OBJECT_TEMPLATES = (
    "a {size} {color} {shape} {where}",
    "a {color} {shape} {where}",
    "there is a {color} {shape} {where}",
    "there is a {size} {color} {shape} {where}",
    "{where}, a {size} {color} {shape}",
    "a picture of a {size} {color} {shape} {where}",
    "a {size} {color} {shape}",
    "a {color} {shape}",
)
TWO_OBJECT_TEMPLATES = (
    "{a} {relation} {b}",
    "there is {a} {relation} {b}",
    "a picture of {a} {relation} {b}",
    "{a} {where_a} and {b} {where_b}",
    "{a} and {b}",
)


@dataclasses.dataclass(frozen=True)
class _Object:
  """One object of a scene; `offset` is (dy, dx) of its center, in cells."""
  shape: int
  color: int
  size: int
  position: int
  offset: tuple[float, float]
  rgb: tuple[float, float, float]


def label_of(shape, color):
  """The class label of a shape and a color (ints or int arrays)."""
  return shape * len(COLORS) + color


def label_name(label: int) -> str:
  """The class name of a label, e.g. 0 -> "red circle".

  Args:
    label: `shape * len(COLORS) + color`, in [0, NUM_CLASSES).

  Returns:
    "<color> <shape>".
  """
  shape, color = divmod(int(label), len(COLORS))
  if not 0 <= shape < len(SHAPES):
    raise ValueError(f"label {label} is outside [0, {NUM_CLASSES})")
  return f"{COLORS[color]} {SHAPES[shape]}"


def parse_caption(caption: str) -> dict[str, int]:
  """The attributes a one-object caption names: {"shape", "color"} always,
  "size" and "position" when it says them ("a small red circle at the top").

  Raises:
    ValueError: a caption that names no single shape and color (two objects,
      or free text).
  """
  words = caption.lower().replace(",", " ").split()
  named = {}
  for attribute, values in (("shape", SHAPES), ("color", COLORS), ("size", SIZES)):
    found = [i for i, value in enumerate(values) if value in words]
    if len(found) > 1 or (not found and attribute != "size"):
      raise ValueError(f"{caption!r} does not name one {attribute}: not a one-object caption")
    if found:
      named[attribute] = found[0]
  text = " ".join(words)
  places = [i for i, where in enumerate(_WHERE) if where in text]
  if places:
    named["position"] = places[0]
  return named


def _sample_object(rng: np.random.Generator, size: int, position: int) -> _Object:
  shape, color = int(rng.integers(len(SHAPES))), int(rng.integers(len(COLORS)))
  offset = rng.uniform(-_JITTER[size], _JITTER[size], 2)
  rgb = COLOR_RGB[color] + rng.uniform(-_COLOR_JITTER, _COLOR_JITTER, 3)
  return _Object(shape, color, size, int(position), tuple(offset), tuple(rgb))


def _sample_objects(rng: np.random.Generator, num_objects: int) -> list[_Object]:
  """One object of any size, or a large and a small one in different cells."""
  if num_objects == 1:
    return [_sample_object(rng, int(rng.integers(len(SIZES))),
                           int(rng.integers(len(POSITIONS))))]
  large_cell, small_cell = rng.choice(len(POSITIONS), size=2, replace=False)
  large = _sample_object(rng, 1, large_cell)
  small = _sample_object(rng, 0, small_cell)
  while (small.shape, small.color) == (large.shape, large.color):
    small = _sample_object(rng, 0, small_cell)  # two distinguishable objects
  return [large, small]


def _sample_background(rng: np.random.Generator) -> np.ndarray:
  level = rng.uniform(*_BACKGROUND_LEVEL)
  return level + rng.uniform(-_BACKGROUND_TINT, _BACKGROUND_TINT, 3)  # [3]


def _noun(rng: np.random.Generator, obj: _Object) -> str:
  """The noun phrase: a red circle, or half of the time a large red circle."""
  size = f"{SIZES[obj.size]} " if rng.random() < 0.5 else ""
  return f"a {size}{COLORS[obj.color]} {SHAPES[obj.shape]}"


def relations_of(position_a: int, position_b: int) -> list[str]:
  """The true relations of cell `position_a` to cell `position_b`."""
  (row_a, col_a), (row_b, col_b) = divmod(position_a, 3), divmod(position_b, 3)
  found = []
  if col_a != col_b:
    found.append("to the left of" if col_a < col_b else "to the right of")
  if row_a != row_b:
    found.append("above" if row_a < row_b else "below")
  return found


def _relation(rng: np.random.Generator, position_a: int, position_b: int) -> str:
  """Where cell `position_a` lies relative to `position_b` (a true relation)."""
  options = relations_of(position_a, position_b)
  return options[int(rng.integers(len(options)))]


def _caption(rng: np.random.Generator, objects: list[_Object]) -> str:
  if len(objects) == 1:
    obj = objects[0]
    template = ONE_OBJECT_TEMPLATES[int(rng.integers(len(ONE_OBJECT_TEMPLATES)))]
    return template.format(size=SIZES[obj.size], color=COLORS[obj.color],
                           shape=SHAPES[obj.shape], where=_WHERE[obj.position])
  a, b = (objects[i] for i in rng.permutation(2))  # either may come first
  template = TWO_OBJECT_TEMPLATES[int(rng.integers(len(TWO_OBJECT_TEMPLATES)))]
  return template.format(a=_noun(rng, a), b=_noun(rng, b),
                         relation=_relation(rng, a.position, b.position),
                         where_a=_WHERE[a.position], where_b=_WHERE[b.position])


def _inside(shape: str, y: np.ndarray, x: np.ndarray, half: float) -> np.ndarray:
  """Whether offsets (y, x) from the center fall in the shape of half-extent `half`."""
  if shape == "circle":
    return y ** 2 + x ** 2 <= half ** 2
  if shape == "square":  # a bit smaller than the box: about the circle's area
    return (np.abs(y) <= 0.88 * half) & (np.abs(x) <= 0.88 * half)
  return (y <= half) & (np.abs(x) <= (y + half) / 2)  # triangle, apex up


def _coverage(obj: _Object, image_size: int) -> np.ndarray:
  """Fraction of each pixel the object covers, float32 [S, S].

  Objects stay inside their grid cell (see `_JITTER`), so only the cell's
  pixels are supersampled.
  """
  cell = image_size / 3
  row, col = divmod(obj.position, 3)
  top, left = int(row * cell), int(col * cell)
  bottom = min(image_size, math.ceil((row + 1) * cell))
  right = min(image_size, math.ceil((col + 1) * cell))
  sub_y = (np.arange(top * _SUPERSAMPLE, bottom * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
  sub_x = (np.arange(left * _SUPERSAMPLE, right * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
  center_y = (row + 0.5 + obj.offset[0]) * cell
  center_x = (col + 0.5 + obj.offset[1]) * cell
  inside = _inside(SHAPES[obj.shape], sub_y[:, None] - center_y,
                   sub_x[None, :] - center_x, _EXTENT[obj.size] * cell / 2)  # [4h, 4w]
  blocks = inside.reshape(bottom - top, _SUPERSAMPLE, right - left, _SUPERSAMPLE)
  alpha = np.zeros((image_size, image_size), np.float32)
  alpha[top:bottom, left:right] = blocks.mean(axis=(1, 3))
  return alpha


def _render(objects: list[_Object], background: np.ndarray,
            rng: np.random.Generator, image_size: int) -> np.ndarray:
  """uint8 [S, S, 3]: noisy background, objects blended over it in order."""
  shape = (image_size, image_size, 3)
  image = background + rng.normal(0.0, _NOISE_STD, shape)  # [S, S, 3]
  for obj in objects:
    alpha = _coverage(obj, image_size)[..., None]  # [S, S, 1]
    image = image * (1 - alpha) + np.asarray(obj.rgb) * alpha
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _attributes(objects: list[_Object]) -> dict[str, np.int64]:
  values = {}
  for suffix, obj in zip(("", "2"), objects):
    for key in ATTRIBUTES:
      values[key + suffix] = np.int64(getattr(obj, key))
  return values


def render_example(seed: int, index: int, image_size: int = 16,
                   num_objects: int = 1) -> dict:
  """Example `index` of the stream `seed`, deterministic.

  Args:
    seed: the stream (one per split, see `SPLIT_SEEDS`).
    index: the example's index in the stream.
    image_size: side S of the square image; 16, 32 and 64 have builder configs.
    num_objects: 1, or 2 (a large and a small object in different cells).

  Returns:
    {"image": uint8 [S, S, 3], "label": int64, "shape", "color", "size",
    "position": int64 (of the larger object), with two objects also "shape2",
    "color2", "size2", "position2" (the small one), "caption": str}.
  """
  if num_objects not in (1, 2):
    raise ValueError(f"num_objects must be 1 or 2, got {num_objects}")
  if image_size < 8:
    raise ValueError(f"image_size must be at least 8, got {image_size}")
  rng = np.random.default_rng([seed, index, num_objects])
  objects = _sample_objects(rng, num_objects)
  background = _sample_background(rng)
  caption = _caption(rng, objects)
  image = _render(objects, background, rng, image_size)  # draws the noise last
  label = np.int64(label_of(objects[0].shape, objects[0].color))
  return {"image": image, "label": label, **_attributes(objects), "caption": caption}


def render_pair(seed: int, index: int, low_res_size: int, image_size: int,
                num_objects: int = 1) -> dict:
  """`render_example` at `image_size`, with "low_res" [s, s, 3]: the same
  scene rendered at `low_res_size` (its own anti-aliasing and texture)."""
  example = render_example(seed, index, image_size, num_objects)
  example["low_res"] = render_example(seed, index, low_res_size, num_objects)["image"]
  return example
