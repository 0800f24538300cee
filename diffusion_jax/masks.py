"""Inpainting masks: 1 where a pixel is known (kept), 0 where the model fills it.

`random_masks` draws training masks inside the traced train step (boxes and
free-form brush strokes, half each; on scenes that store their cells, a
third over one cell of the 3x3 grid, mostly an occupied one); `box`,
`strip` and `cell` build the
masks users draw in code. All masks are float32 [B, H, W, 1] (host helpers
[H, W, 1]).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SIDES = ("left", "right", "top", "bottom")

# Free-form strokes: a random walk of `_VERTICES` points, `_SEGMENT_POINTS`
# brush dabs per segment, brush radius in [_RADIUS] of the image side.
_VERTICES = 5
_SEGMENT_POINTS = 6
_RADIUS = (0.06, 0.14)
_BOX_SIDE = (0.25, 0.75)  # box side, as a fraction of the image side
GRID = 3  # the shapes grid: 3x3 cells
# A cell mask erases an occupied cell with this chance (where the scene has
# one), else any cell: the model learns to fill a named object and to leave
# a cell its caption does not name empty (object removal).
OCCUPIED_CELL_PROBABILITY = 0.75


def _grid(height: int, width: int):
  """Pixel centers in [0, 1): y [H, 1], x [1, W]."""
  y = (jnp.arange(height, dtype=jnp.float32) + 0.5)[:, None] / height
  x = (jnp.arange(width, dtype=jnp.float32) + 0.5)[None, :] / width
  return y, x


def _box_holes(rng, batch: int, height: int, width: int) -> jax.Array:
  """1 inside a random axis-aligned box (the hole), [B, H, W]."""
  size_rng, corner_rng = jax.random.split(rng)
  sides = jax.random.uniform(size_rng, (batch, 2), minval=_BOX_SIDE[0], maxval=_BOX_SIDE[1])
  corners = jax.random.uniform(corner_rng, (batch, 2)) * (1 - sides)
  y, x = _grid(height, width)
  top, left = corners[:, 0, None, None], corners[:, 1, None, None]
  inside_y = (y >= top) & (y < top + sides[:, 0, None, None])
  inside_x = (x >= left) & (x < left + sides[:, 1, None, None])
  return (inside_y & inside_x).astype(jnp.float32)


def _stroke_holes(rng, batch: int, height: int, width: int) -> jax.Array:
  """1 under a random brush stroke (a thick random polyline), [B, H, W]."""
  start_rng, step_rng, radius_rng = jax.random.split(rng, 3)
  start = jax.random.uniform(start_rng, (batch, 1, 2), minval=0.2, maxval=0.8)
  steps = jax.random.normal(step_rng, (batch, _VERTICES - 1, 2)) * 0.25
  vertices = jnp.clip(jnp.concatenate([start, start + jnp.cumsum(steps, 1)], 1), 0, 1)
  frac = jnp.linspace(0.0, 1.0, _SEGMENT_POINTS)[None, None, :, None]  # [1, 1, P, 1]
  dabs = vertices[:, :-1, None] + frac * (vertices[:, 1:, None] - vertices[:, :-1, None])
  dabs = dabs.reshape(batch, -1, 2)  # [B, N, 2] brush centers
  radius = jax.random.uniform(radius_rng, (batch, 1, 1, 1), minval=_RADIUS[0],
                              maxval=_RADIUS[1])
  y, x = _grid(height, width)
  dist2 = ((y[None, :, :, None] - dabs[:, None, None, :, 0]) ** 2
           + (x[None, :, :, None] - dabs[:, None, None, :, 1]) ** 2)  # [B, H, W, N]
  return jnp.any(dist2 <= radius ** 2, axis=-1).astype(jnp.float32)


def _cell_holes(cells: jax.Array, height: int, width: int) -> jax.Array:
  """1 inside grid cell `cells` [B] (0 top left .. 8 bottom right, as
  `cell` numbers them), [B, H, W]."""
  y, x = _grid(height, width)
  row, col = (cells // GRID)[:, None, None], (cells % GRID)[:, None, None]
  inside_y = (jnp.floor(y * GRID) == row)
  inside_x = (jnp.floor(x * GRID) == col)
  return (inside_y & inside_x).astype(jnp.float32)


def _random_cells(rng, occupied: jax.Array) -> jax.Array:
  """One cell [B] per scene: an occupied one (`occupied` bool [B, 9]) with
  chance `OCCUPIED_CELL_PROBABILITY` where there is one, else any."""
  pick_rng, occupied_rng, any_rng = jax.random.split(rng, 3)
  batch = occupied.shape[0]
  any_cell = jax.random.randint(any_rng, (batch,), 0, GRID * GRID)
  logits = jnp.where(occupied, 0.0, -jnp.inf)
  occupied_cell = jax.random.categorical(occupied_rng, jnp.where(
      occupied.any(-1, keepdims=True), logits, 0.0))
  use_occupied = (jax.random.bernoulli(pick_rng, OCCUPIED_CELL_PROBABILITY, (batch,))
                  & occupied.any(-1))
  return jnp.where(use_occupied, occupied_cell, any_cell)


def random_masks(rng: jax.Array, batch: int, height: int, width: int,
                 occupied: jax.Array | None = None) -> jax.Array:
  """Training masks [B, H, W, 1], the hole 0: half random boxes, half
  free-form strokes; given `occupied` (bool [B, 9], a scene's cells that
  hold an object), a third each of boxes, strokes and grid cells
  (`_random_cells`). Traced: a pure function of `rng` (and `occupied`)."""
  kind_rng, box_rng, stroke_rng = jax.random.split(rng, 3)
  use_box = jax.random.bernoulli(kind_rng, 0.5, (batch, 1, 1))
  holes = jnp.where(use_box, _box_holes(box_rng, batch, height, width),
                    _stroke_holes(stroke_rng, batch, height, width))
  if occupied is not None:
    cell_rng, kind_rng = jax.random.split(jax.random.fold_in(rng, 1))
    cells = _cell_holes(_random_cells(cell_rng, occupied), height, width)
    use_cell = jax.random.bernoulli(kind_rng, 1 / 3, (batch, 1, 1))
    holes = jnp.where(use_cell, cells, holes)
  return (1.0 - holes)[..., None]


# ------------------------------------------------------------ host helpers --

def box(size: int | tuple, top: int, left: int, height: int, width: int) -> np.ndarray:
  """A mask [H, W, 1] that fills the box at (top, left) of height x width
  pixels and keeps the rest. `size`: S or (H, W) of the image."""
  rows, cols = (size, size) if np.isscalar(size) else size
  mask = np.ones((rows, cols, 1), np.float32)
  mask[max(top, 0):top + height, max(left, 0):left + width] = 0.0
  return mask


def strip(size: int | tuple, side: str, width: int) -> np.ndarray:
  """A mask [H, W, 1] that fills a strip of `width` pixels along `side`
  ("left", "right", "top", "bottom") and keeps the rest."""
  check_side(side)
  rows, cols = (size, size) if np.isscalar(size) else size
  mask = np.ones((rows, cols, 1), np.float32)
  index = {"left": np.s_[:, :width], "right": np.s_[:, cols - width:],
           "top": np.s_[:width, :], "bottom": np.s_[rows - width:, :]}[side]
  mask[index] = 0.0
  return mask


def cell(size: int, position: int) -> np.ndarray:
  """A mask [S, S, 1] that fills one cell of the 3x3 grid (0 = top left,
  8 = bottom right, as the shapes dataset numbers them) and keeps the rest."""
  if not 0 <= position < 9:
    raise ValueError(f"a grid cell is 0 (top left) to 8 (bottom right), got {position}")
  row, col = divmod(position, 3)
  edges = np.round(np.linspace(0, size, 4)).astype(int)
  return box(size, edges[row], edges[col], edges[row + 1] - edges[row],
             edges[col + 1] - edges[col])


def check_side(side: str) -> str:
  if side not in SIDES:
    raise ValueError(f"no side {side!r}: choose one of {', '.join(SIDES)}")
  return side
