"""Does the text model read where a prompt puts things? The scenes issue's
two composition targets, on generated prompts, sampled as text_guidance.py
does (the model's saved sampler: DDPM 100, CFG 3, seed 0) and read by the
scene evaluator `scenes16`:

- **place**: one-object prompts that name a place ("a red circle in the top
  left"; `--places` of them, every shape, colour and cell): `place right`,
  the named shape and colour in the named cell, and `caption holds`
  (`scenes.caption_holds`: that object and nothing else);
- **relation**: two-object relation prompts ("a red circle above a blue
  square": two colours, any shapes, one of the four relations): `caption
  holds` (both objects, the relation, nothing extra), and, where the
  evaluator finds each named object exactly once, the pair counted as
  - holds: the named relation holds between their cells;
  - opposite: the opposite relation holds instead (A below B for "A above B");
  - neither: neither does (the two share the row, or the column).

  A model that places the two objects but ignores the relation's word has
  holds = opposite (the data's pairs are symmetric under swapping); a model
  that reads it has opposite near 0.

Each row also holds the text model's own sensitivity (`place.text_shift`):
how far its pooled output and token sequence move when the relation's word
is flipped or dropped, against a swap of the objects and a change of colour.

    python benchmarks/relations.py --models=shapes-text2im \
        --out=benchmarks/results/relations_cpu.json
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from place import text_shift  # noqa: E402

from common import emit, environment  # noqa: E402
from diffusion_jax.data import scenes, shapes  # noqa: E402
from diffusion_jax.evaluation import evaluator as evaluator_lib  # noqa: E402
from diffusion_jax.evaluation import metrics  # noqa: E402
from diffusion_jax.inference import loading  # noqa: E402

# The text model's sensitivity to a relation: a caption and its changes.
PROBED = "a red square above a blue circle"
PROBE = {"relation flipped": "a red square below a blue circle",
         "relation dropped": "a red square and a blue circle",
         "objects swapped (meaning flipped)": "a blue circle above a red square",
         "swapped and flipped (same meaning)": "a blue circle below a red square",
         "color (red -> green)": "a green square above a blue circle"}
OPPOSITE = {"above": "below", "below": "above", "to the left of": "to the right of",
            "to the right of": "to the left of"}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="shapes-text2im",
                      help="comma-separated shipped names, exports or workdirs")
  parser.add_argument("--prompts", type=int, default=48, help="relation prompts")
  parser.add_argument("--per_prompt", type=int, default=4)
  parser.add_argument("--places", type=int, default=54,
                      help="one-object place prompts (0: none)")
  parser.add_argument("--out", default="")
  return parser.parse_args(argv)


def relation_prompts(num: int, seed: int = 0) -> list[tuple[str, dict]]:
  """[(text, {"a": (shape, color), "b": (shape, color), "relation"})]: two
  different colours, so that each object is told apart by its colour."""
  rng = np.random.default_rng(seed)
  prompts = []
  for _ in range(num):
    shape_a, shape_b = (int(s) for s in rng.integers(len(shapes.SHAPES), size=2))
    color_a, color_b = (int(c) for c in rng.choice(len(shapes.COLORS), 2, replace=False))
    relation = scenes.RELATIONS[int(rng.integers(len(scenes.RELATIONS)))]
    text = (f"a {shapes.COLORS[color_a]} {shapes.SHAPES[shape_a]} {relation} "
            f"a {shapes.COLORS[color_b]} {shapes.SHAPES[shape_b]}")
    prompts.append((text, {"a": (shape_a, color_a), "b": (shape_b, color_b),
                           "relation": relation}))
  return prompts


def classify(cells: dict, asked: dict) -> str:
  """"holds", "opposite", "neither" or "not both found" for one sample's
  cells ([9] arrays, -1 empty)."""
  def where(shape_color):
    return [c for c in range(scenes.NUM_CELLS)
            if (cells["cell_shape"][c], cells["cell_color"][c]) == shape_color]
  cells_a, cells_b = where(asked["a"]), where(asked["b"])
  if len(cells_a) != 1 or len(cells_b) != 1:
    return "not both found"
  found = shapes.relations_of(cells_a[0], cells_b[0])
  if asked["relation"] in found:
    return "holds"
  return "opposite" if OPPOSITE[asked["relation"]] in found else "neither"


def place_prompts(num: int, seed: int = 0) -> list[tuple[str, dict]]:
  """[(text, {"cell", "shape", "color"})]: one object at a named place,
  cycling through the 9 cells so that each is asked alike."""
  rng = np.random.default_rng(seed)
  prompts = []
  for i in range(num):
    cell = i % scenes.NUM_CELLS
    shape, color = int(rng.integers(len(shapes.SHAPES))), int(rng.integers(len(shapes.COLORS)))
    text = f"a {shapes.COLORS[color]} {shapes.SHAPES[shape]} {shapes._WHERE[cell]}"
    prompts.append((text, {"cell": cell, "shape": shape, "color": color}))
  return prompts


def _sampled(bundle, prompts, per_prompt: int, evaluator):
  """[(text, asked, cells)] for each sample, prompt by prompt: the evaluator's
  cells ([9] arrays) of `per_prompt` samples of each prompt."""
  repeated = [(text, asked) for text, asked in prompts for _ in range(per_prompt)]
  images = np.asarray(bundle.sample(prompts=[t for t, _ in repeated], seed=0))
  cells = metrics.predicted_cells(evaluator, images)
  return [(t, a, {k: v[i] for k, v in cells.items()}) for i, (t, a) in enumerate(repeated)]


def _holds(samples) -> float:
  return round(float(np.mean([scenes.caption_holds(scenes.parse_caption(t), c)
                              for t, _, c in samples])), 3)


def measure_places(bundle, prompts, per_prompt: int, evaluator) -> dict:
  samples = _sampled(bundle, prompts, per_prompt, evaluator)
  right = [(c["cell_shape"][a["cell"]], c["cell_color"][a["cell"]]) == (a["shape"], a["color"])
           for _, a, c in samples]
  return {"place_samples": len(samples), "place_right": round(float(np.mean(right)), 3),
          "place_caption_holds": _holds(samples)}


def measure(model: str, prompts, per_prompt: int, evaluator, placed=()) -> dict:
  tick = time.perf_counter()
  bundle = loading.load(model)
  samples = _sampled(bundle, prompts, per_prompt, evaluator)
  kinds = [classify(c, a) for _, a, c in samples]
  counts = {k: kinds.count(k) for k in ("holds", "opposite", "neither", "not both found")}
  both = len(kinds) - counts["not both found"]
  row = {"model": model, "bundle": repr(bundle), "samples": len(kinds), **counts,
         "holds_given_both": round(counts["holds"] / max(both, 1), 3),
         "opposite_given_both": round(counts["opposite"] / max(both, 1), 3),
         "relation_caption_holds": _holds(samples),
         "text_shift": {change: {"pooled": moved[0], "sequence": moved[1]}
                        for change, moved in text_shift(bundle, PROBED, PROBE).items()}}
  if placed:
    row.update(measure_places(bundle, placed, per_prompt, evaluator))
  return {**row, "seconds": round(time.perf_counter() - tick, 1)}


def main(argv=None):
  args = parse_args(argv)
  prompts = relation_prompts(args.prompts)
  evaluator = evaluator_lib.load_evaluator("scenes16")
  placed = place_prompts(args.places)
  rows = [measure(m, prompts, args.per_prompt, evaluator, placed)
          for m in args.models.split(",")]
  emit({"environment": environment(), "args": vars(args), "prompts": [t for t, _ in prompts],
        "place_prompts": [t for t, _ in placed], "rows": rows}, args.out)


if __name__ == "__main__":
  main()
