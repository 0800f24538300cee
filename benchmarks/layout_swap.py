"""Does fixed noise keep an object's cell when the prompt changes? The trained
text model against the exact denoiser of its data: docs/editing.md.

DDIM at eta 0 is deterministic, so one starting noise under two prompts
gives two samples; the DDIM paper reads their shared layout as the noise's
"high-level features". Here, for every pair of eight one-object prompts
(one colour under three shapes, six colours under one shape):

- **model**: `shapes-text2im` (CFG 3, DDIM eta 0, 50 steps), one noise per
  column under each prompt (`editing.label_swap`); the cell of its one
  object read by the shipped scene evaluator;
- **oracle**: the exact denoiser of the training scenes of each prompt's
  class (`oracles.finite_set_model_fn`, `--train` one-object scenes) with
  the same sampler from `--noise` starting noises; the cell is that of the
  training scene the sample lands on.

A pair's `same_cell` is how often the two prompts put their object in the
same cell from the same noise (chance: about 1/9). `color_cosine` is the
cosine between the two colours' offsets from the mean background: the
direction in pixel space along which the noise favours one cell.

    python benchmarks/layout_swap.py --out=benchmarks/results/layout_swap_cpu.json
"""
from __future__ import annotations

import argparse
import itertools
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from common import emit, environment, save_figure  # noqa: E402
from diffusion_jax import oracles, sampling, schedules  # noqa: E402
from diffusion_jax.data import shapes  # noqa: E402
from diffusion_jax.evaluation import evaluator as evaluator_lib  # noqa: E402
from diffusion_jax.evaluation import metrics  # noqa: E402
from diffusion_jax.inference import editing, loading  # noqa: E402

PROMPTS = ("a red circle", "a red square", "a red triangle", "a green circle", "a blue circle",
           "a yellow circle", "a magenta circle", "a cyan circle")
BACKGROUND_MEAN = 45.0  # the middle of shapes' background gray levels (20-70)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="shapes-text2im")
  parser.add_argument("--num", type=int, default=48, help="noises for the model")
  parser.add_argument("--noise", type=int, default=200, help="noises for the oracle")
  parser.add_argument("--train", type=int, default=12000,
                      help="one-object training scenes the oracle knows")
  parser.add_argument("--steps", default="50")
  parser.add_argument("--out", default="")
  parser.add_argument("--figure", default="docs/editing/layout_swap.png")
  return parser.parse_args(argv)


def noun(prompt: str) -> tuple[str, str]:
  """("red", "circle") of "a red circle"."""
  _, color, shape = prompt.split()
  return color, shape


def color_cosine(a: str, b: str) -> float:
  offset = lambda name: shapes.COLOR_RGB[shapes.COLORS.index(name)] - BACKGROUND_MEAN  # noqa: E731
  u, v = offset(a), offset(b)
  return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


def model_cells(args) -> np.ndarray:
  """int [P, num]: the cell of each sample's one object (-1: not one object)."""
  bundle = loading.load(args.model)
  evaluator = evaluator_lib.load_evaluator("scenes16")
  images = editing.label_swap(bundle, list(PROMPTS), num=args.num, seed=0, steps=args.steps,
                              guidance_scale=3.0)  # [P, num, S, S, C]
  cells = []
  for row in images:
    occupied = metrics.predicted_cells(evaluator, row)["cell_shape"] >= 0  # [num, 9]
    cells.append(np.where(occupied.sum(1) == 1, occupied.argmax(1), -1))
  return np.stack(cells)


def oracle_cells(args) -> np.ndarray:
  """int [P, noise]: the cell of the training scene each exact-denoiser
  sample lands on, from the same noises under every prompt."""
  examples = [shapes.render_example(shapes.SPLIT_SEEDS["train"], i) for i in range(args.train)]
  images = np.stack([e["image"] for e in examples]).astype(np.float32) / 127.5 - 1.0
  labels = np.array([e["label"] for e in examples])
  cells = np.array([e["position"] for e in examples])
  base = schedules.make_schedule("cosine", 1000)
  spaced = schedules.respace(base, args.steps)
  x_T = jax.random.normal(jax.random.PRNGKey(0), (args.noise,) + images.shape[1:])
  found = []
  for prompt in PROMPTS:
    color, shape = noun(prompt)
    of_class = labels == shapes.label_of(shapes.SHAPES.index(shape), shapes.COLORS.index(color))
    pool = images[of_class]  # [n, S, S, C]
    model_fn = oracles.finite_set_model_fn(pool, base)
    landed = []
    for start in range(0, args.noise, 25):  # [25, n, D] distances at a time
      chunk = x_T[start:start + 25]
      out = sampling.sample(model_fn, spaced, chunk.shape, jax.random.PRNGKey(1), method="ddim",
                            eta=0.0, x_T=chunk)
      distance = ((np.asarray(out)[:, None] - pool[None]) ** 2).sum((2, 3, 4))  # [25, n]
      landed.append(distance.argmin(1))
    found.append(cells[of_class][np.concatenate(landed)])
  return np.stack(found)


def same_cell(cells: np.ndarray, i: int, j: int) -> tuple[float, int]:
  both = (cells[i] >= 0) & (cells[j] >= 0)
  return float(np.mean(cells[i][both] == cells[j][both])), int(both.sum())


def kind_of(a: str, b: str) -> str:
  (color_a, _), (color_b, _) = noun(a), noun(b)
  if color_a == color_b:
    return "same colour"
  return "related colours" if color_cosine(color_a, color_b) >= 0.3 else "unrelated colours"


def figure(pairs, path) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 4.5))
  for kind, marker in (("same colour", "o"), ("related colours", "s"),
                       ("unrelated colours", "^")):
    chosen = [p for p in pairs if p["kind"] == kind]
    ax.scatter([p["oracle"] for p in chosen], [p["model"] for p in chosen], marker=marker,
               label=kind)
  ax.plot([0, 1], [0, 1], color="gray", lw=0.8)
  ax.axhline(1 / 9, color="gray", ls=":", lw=0.8)
  ax.set_xlabel("exact denoiser of the data: same cell")
  ax.set_ylabel("shapes-text2im: same cell")
  ax.set_title("One noise, two prompts (DDIM eta 0)")
  return save_figure(fig, [ax], path)


def main(argv=None):
  args = parse_args(argv)
  start = time.perf_counter()
  model, oracle = model_cells(args), oracle_cells(args)
  pairs = []
  for i, j in itertools.combinations(range(len(PROMPTS)), 2):
    a, b = PROMPTS[i], PROMPTS[j]
    model_rate, counted = same_cell(model, i, j)
    pairs.append({"a": a, "b": b, "kind": kind_of(a, b),
                  "color_cosine": round(color_cosine(noun(a)[0], noun(b)[0]), 3),
                  "model": round(model_rate, 3), "model_pairs": counted,
                  "oracle": round(same_cell(oracle, i, j)[0], 3)})
  groups = {}
  for kind in ("same colour", "related colours", "unrelated colours"):
    chosen = [p for p in pairs if p["kind"] == kind]
    groups[kind] = {"pairs": len(chosen),
                    "model": round(float(np.mean([p["model"] for p in chosen])), 3),
                    "oracle": round(float(np.mean([p["oracle"] for p in chosen])), 3)}
  correlation = np.corrcoef([p["model"] for p in pairs], [p["oracle"] for p in pairs])[0, 1]
  report = {"benchmark": "layout_swap", "environment": environment(), "args": vars(args),
            "groups": groups, "model_oracle_correlation": round(float(correlation), 3),
            "one_object_drawn": round(float(np.mean(model >= 0)), 3),
            "seconds": round(time.perf_counter() - start, 1), "pairs": pairs}
  if args.figure:
    report["figure"] = figure(pairs, args.figure)
  emit(report, args.out)


if __name__ == "__main__":
  main()
