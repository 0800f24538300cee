"""Scenes of 0 to 3 objects on the 3x3 grid of `shapes`, with captions that
name every object: the `shapes/scenes_<size>` builder configs.

Each object sits in its own cell and has any shape, color and size; two or
three objects may be identical in shape and color (for counts: "two green
triangles"). A caption names every object in one of several phrasings
(`PHRASINGS`): with their places, with a relation between two of them,
with counts, or by attributes alone; an empty scene has its own captions.
`parse_caption` reads any of them back, and `caption_holds` checks one
against a scene's cells, which is what the tests and the caption judge use.

Every example stores its cells: `cell_shape`, `cell_color`, `cell_size`,
int64 [9] in reading order (top left to bottom right), -1 where empty.
Its `label` is the class of the first object in reading order, and
`EMPTY_LABEL` (= `shapes.NUM_CLASSES`) for an empty scene.

Example `index` of stream `seed` is a pure function of both, drawn from
`np.random.default_rng([seed, index, STREAM])`; the one- and two-object
configs keep their own streams and render as before.
"""
from __future__ import annotations

import itertools
import re
from typing import Sequence

import numpy as np

from diffusion_jax.data import shapes

MAX_OBJECTS = 3
NUM_CELLS = len(shapes.POSITIONS)
EMPTY_LABEL = shapes.NUM_CLASSES
STREAM = 13  # the rng stream's third key (the older configs use 1 and 2)
# How many objects a scene holds: 0 to 3.
COUNT_PROBABILITIES = (0.1, 0.3, 0.3, 0.3)
# The chance that an object after the first copies an earlier one's shape
# and color (its size and cell its own), so that counts occur.
COPY_PROBABILITY = 0.3
EMPTY_CAPTIONS = ("an empty scene", "nothing", "an empty picture", "a plain background")
PHRASINGS = ("places", "relation", "counts", "plain")
RELATIONS = ("to the left of", "to the right of", "above", "below")
_NUMBERS = {1: "a", 2: "two", 3: "three"}
_CELL_FIELDS = ("cell_shape", "cell_color", "cell_size")


def _sample(rng: np.random.Generator) -> list[shapes._Object]:
  """The objects of one scene, in distinct cells, in reading order."""
  count = int(rng.choice(len(COUNT_PROBABILITIES), p=COUNT_PROBABILITIES))
  cells = sorted(int(c) for c in rng.choice(NUM_CELLS, size=count, replace=False))
  objects = []
  for cell in cells:
    obj = shapes._sample_object(rng, int(rng.integers(len(shapes.SIZES))), cell)
    if objects and rng.random() < COPY_PROBABILITY:
      model = objects[int(rng.integers(len(objects)))]
      jitter = np.asarray(obj.rgb) - shapes.COLOR_RGB[obj.color]  # its own, on the copied color
      obj = shapes._Object(model.shape, model.color, obj.size, obj.position, obj.offset,
                           tuple(shapes.COLOR_RGB[model.color] + jitter))
    objects.append(obj)
  return objects


def cells_of(objects: Sequence[shapes._Object]) -> dict[str, np.ndarray]:
  """{"cell_shape", "cell_color", "cell_size"}: int64 [9], -1 where empty."""
  cells = {name: np.full((NUM_CELLS,), -1, np.int64) for name in _CELL_FIELDS}
  for obj in objects:
    for name, value in zip(_CELL_FIELDS, (obj.shape, obj.color, obj.size)):
      cells[name][obj.position] = value
  return cells


# One class per cell for the scene evaluator: 0 empty, else 1 + the object's
# (shape, color, size) in row-major order: 37 values.
CELL_CLASSES = 1 + len(shapes.SHAPES) * len(shapes.COLORS) * len(shapes.SIZES)


def cell_codes(cells: dict) -> np.ndarray:
  """int64 [..., 9]: each cell's class (`CELL_CLASSES`) from its
  "cell_shape", "cell_color", "cell_size" [..., 9] (-1 empty)."""
  shape, color, size = (np.asarray(cells[name]) for name in _CELL_FIELDS)
  code = 1 + (shape * len(shapes.COLORS) + color) * len(shapes.SIZES) + size
  return np.where(shape >= 0, code, 0).astype(np.int64)


def cells_from_codes(codes: np.ndarray) -> dict[str, np.ndarray]:
  """The inverse of `cell_codes`: {"cell_shape", "cell_color", "cell_size"}."""
  codes = np.asarray(codes, np.int64)
  rest, size = np.divmod(np.maximum(codes - 1, 0), len(shapes.SIZES))
  shape, color = np.divmod(rest, len(shapes.COLORS))
  empty = codes == 0
  return {name: np.where(empty, -1, value)
          for name, value in zip(_CELL_FIELDS, (shape, color, size))}


def _noun(obj, rng, count: int = 1) -> str:
  """"a red circle", half of the time with its size; "two red circles"."""
  size = f"{shapes.SIZES[obj.size]} " if count == 1 and rng.random() < 0.5 else ""
  plural = "s" if count > 1 else ""
  return f"{_NUMBERS[count]} {size}{shapes.COLORS[obj.color]} {shapes.SHAPES[obj.shape]}{plural}"


def _listing(parts: Sequence[str]) -> str:
  """"x", "x and y", "x, y and z"."""
  return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def parse_phrasing_weights(text: str) -> dict[str, float]:
  """"relation:3,places:1" -> {"relation": 3.0, "places": 1.0, ...}: a weight
  per phrasing (those not named weigh 1; "" weighs all alike).

  Raises:
    ValueError: an unknown phrasing, a bad or negative weight, or all zero.
  """
  weights = dict.fromkeys(PHRASINGS, 1.0)
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, _, value = part.partition(":")
    if name not in PHRASINGS:
      raise ValueError(f"phrasing weights {text!r}: {name!r} is not one of {list(PHRASINGS)}")
    try:
      weights[name] = float(value)
    except ValueError:
      raise ValueError(f"phrasing weights {text!r}: {part!r} is not name:weight") from None
    if not weights[name] >= 0:
      raise ValueError(f"phrasing weights {text!r}: the weight of {name} is negative")
  if not any(weights.values()):
    raise ValueError(f"phrasing weights {text!r}: every weight is zero")
  return weights


def caption(rng: np.random.Generator, objects: Sequence[shapes._Object],
            phrasing: str | None = None, weights: dict[str, float] | None = None) -> str:
  """A caption naming every object: the given phrasing, else one drawn from
  those that fit the scene, uniformly or by `weights` (phrasing -> weight;
  a scene that fits only zero-weight phrasings draws among them uniformly)."""
  if not objects:
    return EMPTY_CAPTIONS[int(rng.integers(len(EMPTY_CAPTIONS)))]
  groups = {}
  for obj in objects:
    groups.setdefault((obj.shape, obj.color), []).append(obj)
  usable = [p for p in PHRASINGS
            if (p != "relation" or len(objects) >= 2)
            and (p != "counts" or len(groups) < len(objects))]
  if phrasing is None and weights is not None:
    odds = np.array([weights.get(p, 1.0) for p in usable], np.float64)
    if odds.sum() > 0:
      phrasing = usable[int(rng.choice(len(usable), p=odds / odds.sum()))]
  phrasing = phrasing or usable[int(rng.integers(len(usable)))]
  if phrasing not in usable:
    raise ValueError(f"phrasing {phrasing!r} does not fit this scene; choose from {usable}")
  order = [objects[i] for i in rng.permutation(len(objects))]
  where = lambda obj: shapes._WHERE[obj.position]  # noqa: E731
  if phrasing == "places":
    return _listing([f"{_noun(o, rng)} {where(o)}" for o in order])
  if phrasing == "plain":
    return _listing([_noun(o, rng) for o in order])
  if phrasing == "counts":
    return _listing([_noun(g[0], rng, len(g)) for g in groups.values()])
  a, b, *rest = order
  options = shapes.relations_of(a.position, b.position)
  text = f"{_noun(a, rng)} {options[int(rng.integers(len(options)))]} {_noun(b, rng)}"
  return text + "".join(f", and {_noun(o, rng)} {where(o)}" for o in rest)


def describe(cells: dict, rng: np.random.Generator, phrasing: str | None = None,
             weights: dict[str, float] | None = None) -> str:
  """A caption (`caption`) of the scene that `cells` ("cell_shape",
  "cell_color", "cell_size": [9], -1 empty) hold: what an edit asks for,
  or a training example's caption drawn afresh (`recaptioned`)."""
  objects = [shapes._Object(int(cells["cell_shape"][c]), int(cells["cell_color"][c]),
                            int(cells["cell_size"][c]), c, (0.0, 0.0), (0.0, 0.0, 0.0))
             for c in range(NUM_CELLS) if cells["cell_shape"][c] >= 0]
  return caption(rng, objects, phrasing if objects else None, weights)


def recaptioned(example: dict, rng: np.random.Generator,
                weights: dict[str, float]) -> dict:
  """`example` with its "caption" drawn afresh from its stored cells, the
  phrasing by `weights`: each epoch sees another caption of the scene, as
  often in each phrasing as the weights ask (`data.phrasings`)."""
  return {**example, "caption": describe(example, rng, weights=weights)}


def render(seed: int, index: int, image_size: int = 16, low_res_size: int = 0) -> dict:
  """Example `index` of the stream `seed`: {"image": uint8 [S, S, 3],
  "label", "num_objects": int64, "cell_shape", "cell_color", "cell_size":
  int64 [9] (-1 empty), "cell_0" ... "cell_8": int64 (`cell_codes`, the
  scene evaluator's targets), "caption": str}; `low_res_size` s > 0 adds
  "low_res" uint8 [s, s, 3], the same scene rendered at s (its own
  anti-aliasing and texture: the upsampling pairs)."""
  rng = np.random.default_rng([seed, index, STREAM])
  objects = _sample(rng)
  background = shapes._sample_background(rng)
  text = caption(rng, objects)
  image = shapes._render(objects, background, rng, image_size)
  extra = {}
  if low_res_size:
    extra["low_res"] = render(seed, index, low_res_size)["image"]
  label = (shapes.label_of(objects[0].shape, objects[0].color) if objects else EMPTY_LABEL)
  cells = cells_of(objects)
  codes = {f"cell_{i}": code for i, code in enumerate(cell_codes(cells))}
  return {"image": image, "label": np.int64(label), "num_objects": np.int64(len(objects)),
          **cells, **codes, "caption": text, **extra}


# -- reading captions back ---------------------------------------------------

_NOUN = re.compile(
    r"\b(a|two|three) (?:(small|large) )?(" + "|".join(shapes.COLORS) + r") ("
    + "|".join(shapes.SHAPES) + r")s?\b")
_PLACE = re.compile(r"^ (" + "|".join(re.escape(w) for w in shapes._WHERE) + r")")
_RELATION = re.compile(r"^ (" + "|".join(RELATIONS) + r") ")


def parse_caption(text: str) -> dict:
  """What a scene caption says: {"objects": [{"count", "shape", "color",
  and "size", "position" where named}], "relations": [(i, relation, j)]}
  (object i lies `relation` object j). An empty scene's caption gives no
  objects.

  Raises:
    ValueError: text that names no object and is no empty-scene caption.
  """
  text = text.strip().lower()
  if text in EMPTY_CAPTIONS:
    return {"objects": [], "relations": []}
  found = list(_NOUN.finditer(text))
  if not found:
    raise ValueError(f"{text!r} names no object and is no empty-scene caption")
  objects, relations = [], []
  for i, match in enumerate(found):
    number, size, color, shape = match.groups()
    named = {"count": {"a": 1, "two": 2, "three": 3}[number],
             "shape": shapes.SHAPES.index(shape), "color": shapes.COLORS.index(color)}
    if size:
      named["size"] = shapes.SIZES.index(size)
    after = text[match.end():]
    place = _PLACE.match(after)
    if place:
      named["position"] = shapes._WHERE.index(place.group(1))
    relation = _RELATION.match(after)
    if relation and i + 1 < len(found) and found[i + 1].start() == match.end() + len(
        relation.group(0)):
      relations.append((i, relation.group(1), i + 1))
    objects.append(named)
  return {"objects": objects, "relations": relations}


def phrasing_of(parsed: dict) -> str:
  """Which kind of caption `parse_caption` read: "empty", "relation" (a
  relation between two objects), "counts" (a number above one), "places"
  (every object placed) or "plain" (attributes alone)."""
  objects = parsed["objects"]
  if not objects:
    return "empty"
  if parsed["relations"]:
    return "relation"
  if any(o["count"] > 1 for o in objects):
    return "counts"
  return "places" if all("position" in o for o in objects) else "plain"


def _fits(named: dict, cells: dict, cell: int) -> bool:
  keys = {"shape": "cell_shape", "color": "cell_color", "size": "cell_size"}
  return cells["cell_shape"][cell] >= 0 and all(
      cells[keys[k]][cell] == named[k] for k in keys if k in named)


def objects_found(parsed: dict, cells: dict) -> int:
  """How many of the objects a parsed caption names (counted: "two" is two)
  a scene shows, each in a cell of its own with its attributes and place
  (relations and extra objects aside): the most that one assignment of
  named objects to occupied cells gets right."""
  occupied = [c for c in range(NUM_CELLS) if cells["cell_shape"][c] >= 0]
  slots = [o for o in parsed["objects"] for _ in range(o["count"])]
  best = 0
  for chosen in itertools.permutations(occupied, min(len(occupied), len(slots))):
    for named in itertools.permutations(slots, len(chosen)):
      best = max(best, sum(_fits(o, cells, c) and o.get("position", c) == c
                           for o, c in zip(named, chosen)))
  return best


def caption_holds(parsed: dict, cells: dict) -> bool:
  """Whether a scene with these cells ([9] arrays, -1 empty) shows what the
  parsed caption says: every named object with its attributes and place,
  as many as counted, each relation, and no object it does not name."""
  occupied = [c for c in range(NUM_CELLS) if cells["cell_shape"][c] >= 0]
  if sum(o["count"] for o in parsed["objects"]) != len(occupied):
    return False
  # Assign cells to the named objects (at most 3 cells: try every way).
  slots = [i for i, o in enumerate(parsed["objects"]) for _ in range(o["count"])]
  for assignment in itertools.permutations(occupied, len(slots)):
    where = {}
    for slot, cell in zip(slots, assignment):
      where.setdefault(slot, []).append(cell)
    if not all(_fits(parsed["objects"][s], cells, c) for s, c in zip(slots, assignment)):
      continue
    if not all(parsed["objects"][s].get("position", c) == c
               for s, c in zip(slots, assignment)):
      continue
    if all(relation in shapes.relations_of(where[i][0], where[j][0])
           for i, relation, j in parsed["relations"]):
      return True
  return False
