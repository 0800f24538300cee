"""Sample quality against network evaluations, for every sampler: docs/samplers.md.

A model (by default the shipped `shapes-classes`, the main job's) is
sampled `--num` times (random classes drawn from each seed) with every
method of `--methods` at each budget of `--evals` network evaluations,
for each seed, unguided or guided by a noisy classifier (`--classifier`,
`--classifier_scale`). Each set is measured against the test split in the
shipped evaluator's features: FD, precision and recall (k = 3), class
accuracy, and the residual-noise fraction, with the wall time per sample
(compiling excluded: the first batch of each point is not timed). One long
DDPM point (`--long` steps, seed 0) is the reference any sampler may reach.

Steps and evaluations: every method takes one network evaluation per step,
except Heun (2N - 3 for N steps: the most steps within E evaluations, and
the points plotted at the evaluations spent).

Resumable: every point measured is kept in `--out`; running the same
command again continues where it stopped (seeds outermost, so a stopped run
leaves whole curves).

    python benchmarks/samplers.py --out=benchmarks/results/samplers_cpu.json
    python benchmarks/samplers.py --classifier=shapes-classifier --classifier_scale=3 \\
        --out=benchmarks/results/samplers_classifier_cpu.json
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(1, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/

import numpy as np  # noqa: E402
from recipe import Judge  # noqa: E402

from common import environment, markdown_table, resumable_results, save_figure  # noqa: E402
from diffusion_jax import visualize  # noqa: E402
from diffusion_jax.inference import loading, outputs  # noqa: E402

METHODS = ("ddim", "euler_ancestral", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc", "heun")
EVALS = (5, 8, 10, 15, 20, 25, 50, 100)
METRICS = ("fd", "class_accuracy", "precision", "recall")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="shapes-classes", help="a shipped name or a path")
  parser.add_argument("--classifier", default="", help="a noisy classifier guiding it")
  parser.add_argument("--classifier_scale", type=float, default=3.0)
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--evals", default=",".join(map(str, EVALS)))
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--num", type=int, default=1000, help="samples per point")
  parser.add_argument("--batch", type=int, default=250)
  parser.add_argument("--long", type=int, default=1000, help="the DDPM reference's steps (0: none)")
  parser.add_argument("--out", default="benchmarks/results/samplers_cpu.json")
  parser.add_argument("--figures", default="docs/samplers")
  parser.add_argument("--report_only", action="store_true",
                      help="only redraw the plot, the grid and the table from --out")
  return parser.parse_args(argv)


def steps_for(method: str, evaluations: int) -> int:
  """The most respaced steps that cost at most `evaluations` network
  evaluations (Heun: 2N - 3 for N steps, the spacings here keeping t = 0)."""
  return (evaluations + 3) // 2 if method == "heun" else evaluations


def evaluations_of(method: str, steps: int) -> int:
  return 2 * steps - 3 if method == "heun" and steps >= 3 else steps


def draw(bundle, guide, method: str, steps: int, seed: int, args):
  """(uint8 images [num, S, S, C], labels [num], seconds per sample after the first batch)."""
  labels = outputs.many_labels(bundle.spec.num_classes, args.num, seed)
  chunks, timed = [], []
  for i, start in enumerate(range(0, args.num, args.batch)):
    tick = time.perf_counter()
    batch = bundle.sample(labels=labels[start:start + args.batch], seed=seed * 10_000 + i,
                          method=method, steps=str(steps), **guide)
    chunks.append(visualize.to_uint8(batch))
    if i:
      timed.append((time.perf_counter() - tick) / len(batch))
  return np.concatenate(chunks), labels, (float(np.mean(timed)) if timed else None)


def main(argv=None):
  args = parse_args(argv)
  results, save = resumable_results(args.out, {"points": {}})
  if args.report_only:
    report(results, args)
    return
  results.update(environment=environment(), args=vars(args))

  bundle = loading.load(args.model)
  guide = ({} if not args.classifier else
           {"classifier": loading.load(args.classifier), "classifier_scale": args.classifier_scale})
  judge = Judge(bundle.config.data, args)
  results["floor"] = judge.floor
  todo = [(seed, method, int(e)) for seed in map(int, args.seeds.split(","))
          for method in args.methods.split(",") for e in args.evals.split(",")]
  if args.long:
    todo.append((0, "ddpm", args.long))
  for seed, method, evaluations in todo:
    key = f"{method}/{evaluations}/seed{seed}"
    if key in results["points"]:
      continue
    steps = steps_for(method, evaluations)
    images, labels, per_sample = draw(bundle, guide, method, steps, seed, args)
    row = judge.measure(key, images, labels)
    row.update(method=method, evaluations=evaluations, steps=steps, seed=seed,
               spent=evaluations_of(method, steps), seconds_per_sample=per_sample)
    results["points"][key] = row
    save()
  report(results, args)


def summary(results) -> dict:
  """{(method, evaluations): {metric: (mean, std, seeds)}} over the seeds."""
  grouped = {}
  for row in results["points"].values():
    grouped.setdefault((row["method"], row["evaluations"]), []).append(row)
  return {key: {m: (float(np.mean([r[m] for r in rows])), float(np.std([r[m] for r in rows])),
                    len(rows)) for m in (*METRICS, "residual_noise")}
          for key, rows in grouped.items()}


def report(results, args) -> None:
  """The curves' PNG and a markdown table (mean +- std over seeds)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  table = summary(results)
  methods = [m for m in (*METHODS, "ddpm") if any(k[0] == m for k in table)]
  stem = pathlib.Path(args.out).stem
  pathlib.Path(args.figures).mkdir(parents=True, exist_ok=True)
  fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 4))
  for ax, metric in zip(axes, METRICS):
    for method in methods:
      points = sorted((evaluations_of(m, steps_for(m, e)), v[metric][0], v[metric][1])
                      for (m, e), v in table.items() if m == method)
      evals, means, stds = zip(*points)
      style = dict(marker="*", markersize=12, linestyle="") if method == "ddpm" else {}
      ax.errorbar(evals, means, yerr=stds, label=method, capsize=2, **style)
    if metric == "fd":
      ax.axhline(results["floor"]["fd"], color="gray", linestyle=":", label="data floor")
      ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations")
    ax.set_title(metric)
  axes[0].legend(fontsize=7)
  print(save_figure(fig, axes, pathlib.Path(args.figures) / f"{stem}.png"))  # noqa: T201
  rows = []
  for (method, evals), v in sorted(table.items(), key=lambda kv: (methods.index(kv[0][0]),
                                                                   kv[0][1])):
    rows.append([method, evaluations_of(method, steps_for(method, evals)),
                 f"{v['fd'][0]:.1f} ± {v['fd'][1]:.1f}",
                 f"{v['class_accuracy'][0]:.3f} ± {v['class_accuracy'][1]:.3f}",
                 f"{v['precision'][0]:.3f}", f"{v['recall'][0]:.3f}",
                 f"{v['residual_noise'][0]:.3f}", v["fd"][2]])
  print("\n".join(markdown_table(  # noqa: T201
      ["method", "evaluations", "FD", "class accuracy", "precision", "recall",
       "residual noise", "seeds"], rows)))
  if "args" in results:
    grid(results, args)


def grid(results, args, evaluations=(10, 20), per_row=8) -> None:
  """One row per method at each budget: the same labels and seed."""
  bundle = loading.load(results["args"]["model"])
  labels = list(range(per_row))
  for e in evaluations:
    rows, names = [], []
    for method in (m for m in METHODS if f"{m}/{e}/seed0" in results["points"]):
      rows.append(bundle.sample(labels=labels, seed=7, method=method,
                                steps=str(steps_for(method, e))))
      names.append(method)
    if rows:
      path = pathlib.Path(args.figures) / f"{pathlib.Path(args.out).stem}_{e}evals.png"
      visualize.rows(np.concatenate(rows), [f"{n}, {e} evals" for n in names]).save(path)
      print(path)  # noqa: T201


if __name__ == "__main__":
  main()
