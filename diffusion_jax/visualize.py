"""Image grids as PNG: one row per class (or prompt), with row titles."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> [0, 255] uint8."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, row_titles: Optional[Sequence[str]] = None,
               scale: int = 4, pad: int = 2,
               title_width: Optional[int] = None) -> Image.Image:
  """Tiles [R, C, H, W, ch] images (uint8 or [-1, 1] floats) into one picture.

  Each image is enlarged `scale` times (nearest neighbour, so small images stay
  crisp); row titles, if given, are written in a left margin `title_width`
  wide (default: the longest title's width, at least 110 pixels).
  """
  images = np.asarray(images)
  if images.dtype != np.uint8:
    images = to_uint8(images)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  rows, cols, height, width, _ = images.shape
  cell_h, cell_w = height * scale + pad, width * scale + pad
  margin = 0
  if row_titles:
    longest = max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(str(t))
                  for t in row_titles)
    margin = title_width if title_width is not None else max(110, int(longest) + 12)
  canvas = Image.new("RGB", (margin + cols * cell_w + pad, rows * cell_h + pad), "white")
  draw = ImageDraw.Draw(canvas)
  for r in range(rows):
    if row_titles:
      draw.text((4, pad + r * cell_h + cell_h // 2 - 6), str(row_titles[r]), fill="black")
    for c in range(cols):
      tile = Image.fromarray(images[r, c]).resize((width * scale, height * scale),
                                                  Image.NEAREST)
      canvas.paste(tile, (margin + pad + c * cell_w, pad + r * cell_h))
  return canvas


def rows(images: np.ndarray, row_titles: Sequence[str], scale: int = 4) -> Image.Image:
  """[R * C, H, W, ch] images (R titles, C images each, in row order) as a
  grid of R titled rows: `visualize.rows(model.sample(prompts=...), prompts)`."""
  images = np.asarray(images)
  if len(row_titles) == 0 or images.shape[0] % len(row_titles):
    raise ValueError(f"{images.shape[0]} images do not make {len(row_titles)} equal rows")
  return image_grid(images.reshape(len(row_titles), -1, *images.shape[1:]), row_titles,
                    scale=scale)
