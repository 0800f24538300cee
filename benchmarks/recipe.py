"""Learning curves of the training recipe, one factor at a time: docs/recipe.md.

Each recipe is the main job (configs/shapes_class_cond.py) with a few
overrides, trained for `--steps` with a checkpoint kept every
`--eval_every` steps, for each seed. Every kept checkpoint is sampled
`--num` times (random classes, seed 0) with the main job's sampler (DDPM,
100 steps) and with DDIM at eta 0 (50 steps), and measured against the test
split in the shipped evaluator's features: FD, class accuracy and the
residual-noise fraction (`evaluation.metrics.roughness` above twice the
test split's largest). The data floor is the train split measured the same
way at the same count. The time per step is the median of the logged
steps per second after the first log (compiling excluded).

Resumable: training resumes from each run's workdir and every measured
point is kept in `--out`, so running the same command again continues
where it stopped.

    python benchmarks/recipe.py --recipes=adm2021,v,min_snr --seeds=0,1 \
        --out=benchmarks/results/recipe_cpu.json
"""
from __future__ import annotations

import argparse
import importlib
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(1, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import sample_quality  # noqa: E402

from common import environment, markdown_table, resumable_results, train_timed  # noqa: E402
from diffusion_jax.evaluation import eval_mode, metrics  # noqa: E402
from diffusion_jax.evaluation import evaluator as evaluator_lib  # noqa: E402
from diffusion_jax.inference import loading  # noqa: E402

# The 2021 recipe (ADM's: eps, L_simple, uniform t, a constant rate after
# warm-up, EMA with warm-up) on the main job's network, data and batch as
# they were when these curves started, set whole whatever the main job's
# config says now: every recipe is one factor (or the named combination)
# away from it, and a run resumes under the config it started with.
ADM2021 = {"diffusion.parameterization": "eps", "diffusion.loss_weighting": "none",
           "diffusion.timestep_sampler": "uniform", "optim.schedule": "constant",
           "diffusion.zero_terminal_snr": False, "data.batch_size": 64,
           "model.channels": 32, "model.channel_mult": (1, 2, 2), "model.num_res_blocks": 1,
           "model.attention_resolutions": (8,), "optim.lr": 1e-3, "optim.warmup_steps": 50,
           "train.ema_rates": (0.995,), "sample.ema_rate": 0.995, "train.log_every": 25}
RECIPES = {
    "adm2021": {},
    "v": {"diffusion.parameterization": "v"},
    "x0": {"diffusion.parameterization": "x0"},
    "min_snr": {"diffusion.loss_weighting": "min_snr"},
    "log_normal": {"diffusion.timestep_sampler": "log_normal"},
    "cosine_lr": {"optim.schedule": "cosine"},
    "edm": {"diffusion.parameterization": "v", "diffusion.loss_weighting": "edm",
            "diffusion.timestep_sampler": "log_normal"},
    "v_min_snr_cosine": {"diffusion.parameterization": "v", "diffusion.loss_weighting": "min_snr",
                         "optim.schedule": "cosine"},
    # Is v at 1,300 steps undertrained? The same run twice as long (with a
    # constant rate, v's workdir copied at 1,300 continues it exactly).
    "v_long": {"diffusion.parameterization": "v", "train.num_steps": 2600},
    # The main job's 10 minutes spent otherwise: half the batch, twice the steps.
    "v_batch32": {"diffusion.parameterization": "v", "data.batch_size": 32,
                  "train.num_steps": 2600},
    # Two more ways to spend the 10 minutes: a quarter of the batch and four
    # times the steps, and batch 32 at twice the learning rate.
    "v_batch16": {"diffusion.parameterization": "v", "data.batch_size": 16,
                  "train.num_steps": 5200},
    "v_batch32_lr2e3": {"diffusion.parameterization": "v", "data.batch_size": 32,
                        "train.num_steps": 2600, "optim.lr": 2e-3},
    # Toward accuracy 0.9 inside the 10 minutes, from v_batch32_lr2e3: a
    # rate twice higher again, Adam's second moment over ~100 steps (EDM2's
    # b2 = 0.99) instead of ~1,000, and min-SNR-5 weighting on v.
    "v_batch32_lr4e3": {"diffusion.parameterization": "v", "data.batch_size": 32,
                        "train.num_steps": 2600, "optim.lr": 4e-3},
    "v_batch32_lr2e3_b2": {"diffusion.parameterization": "v", "data.batch_size": 32,
                           "train.num_steps": 2600, "optim.lr": 2e-3, "optim.b2": 0.99},
    # The two that helped, together.
    "v_batch32_lr4e3_b2": {"diffusion.parameterization": "v", "data.batch_size": 32,
                           "train.num_steps": 2600, "optim.lr": 4e-3, "optim.b2": 0.99},
    "v_batch32_lr2e3_min_snr": {"diffusion.parameterization": "v", "data.batch_size": 32,
                                "train.num_steps": 2600, "optim.lr": 2e-3,
                                "diffusion.loss_weighting": "min_snr"},
    # 1e-3, 2e-3, 4e-3 gave 0.74, 0.80, 0.91: does the rate still limit at 4e-3?
    "v_batch32_lr8e3": {"diffusion.parameterization": "v", "data.batch_size": 32,
                        "train.num_steps": 2600, "optim.lr": 8e-3},
}
SAMPLERS = {"ddpm100": dict(method="ddpm", steps="100"),
            "ddim50_eta0": dict(method="ddim", eta=0.0, steps="50")}
METRICS = ("fd", "class_accuracy", "residual_noise")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--recipes", default=",".join(RECIPES))
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--steps", type=int, default=1300, help="training steps of each run")
  parser.add_argument("--eval_every", type=int, default=325)
  parser.add_argument("--eval_steps", default="",
                      help="measure only these kept steps (default: every kept one)")
  parser.add_argument("--num", type=int, default=500, help="samples per point")
  parser.add_argument("--batch", type=int, default=250)
  parser.add_argument("--root", default="runs/recipe", help="the runs' workdirs")
  parser.add_argument("--out", default="benchmarks/results/recipe_cpu.json")
  parser.add_argument("--figures", default="docs/recipe")
  parser.add_argument("--train_only", action="store_true")
  parser.add_argument("--report_only", action="store_true",
                      help="only redraw the curves and the table from --out")
  parser.add_argument("--floor_only", action="store_true",
                      help="only print the data floor at --num samples, as JSON")
  return parser.parse_args(argv)


def recipe_config(name: str, seed: int, args) -> ml_collections.ConfigDict:
  """The main job's config with recipe `name`'s overrides, `args.steps` long
  unless the recipe sets `train.num_steps`."""
  config = importlib.import_module("configs.shapes_class_cond").get_config("")
  config.train.num_steps = args.steps  # a recipe may set its own length
  for key, value in {**ADM2021, **RECIPES[name]}.items():
    section, field = key.split(".")
    config[section][field] = value
  config.seed = seed
  config.train.checkpoint_every = args.eval_every
  config.train.keep_every = args.eval_every
  config.train.sample_every = 0
  return config


def train(name: str, seed: int, args) -> dict:
  """Trains (or resumes) one run; its workdir and the time per step."""
  return train_timed(recipe_config(name, seed, args),
                     pathlib.Path(args.root) / f"{name}_seed{seed}")


class Judge:
  """The shipped evaluator, the test split's features and the floor."""

  def __init__(self, data_config, args):
    self.eval_config = ml_collections.ConfigDict({"k": 3, "kid_subsets": 100,
                                                  "kid_subset_size": 1000})
    self.evaluator = evaluator_lib.load_evaluator(
        eval_mode.shipped_evaluator_for(data_config.name))
    self.net = lambda images: evaluator_lib.features(self.evaluator, images)  # noqa: E731
    test, _ = sample_quality.split_images(data_config, "test", 10 ** 6)
    self.real = self.net(test)
    self.threshold = metrics.threshold_of(test)
    train, labels = sample_quality.split_images(data_config, "train", args.num)
    self.floor = self.measure("train split (data floor)", train, labels)

  def measure(self, name, images, labels) -> dict:
    row = sample_quality.measured(name, images, labels, self.real, self.net, self.evaluator,
                                  self.eval_config)
    row["residual_noise"] = metrics.residual_noise_fraction(images, self.threshold)
    return row


def evaluate(run_key: str, workdir: str, judge: Judge, results: dict, args, save) -> None:
  """Measures every kept checkpoint of a run not yet in `results`."""
  from diffusion_jax import checkpoint as ckpt_lib
  checkpointer = ckpt_lib.Checkpointer(str(pathlib.Path(workdir) / "checkpoints"),
                                       read_only=True)
  kept = checkpointer.complete_steps()
  checkpointer.close()
  if args.eval_steps:
    kept = [s for s in kept if s in {int(v) for v in args.eval_steps.split(",")}]
  done = {(r["step"], r["sampler"]) for r in results["runs"][run_key].setdefault("evals", [])}
  for step in kept:
    todo = [s for s in SAMPLERS if (step, s) not in done]
    if not todo:
      continue
    bundle = loading.load(workdir, step=step)
    for sampler in todo:
      tick = time.perf_counter()
      kwargs = {k: v for k, v in SAMPLERS[sampler].items() if k != "steps"}
      images, labels = sample_quality.draw(bundle, kwargs, SAMPLERS[sampler]["steps"], args)
      row = judge.measure(f"{run_key} step {step} {sampler}", images, labels)
      row.update(step=step, sampler=sampler, seconds=round(time.perf_counter() - tick, 1))
      results["runs"][run_key]["evals"].append(row)
      save()


def main(argv=None):
  args = parse_args(argv)
  if args.floor_only:
    Judge(recipe_config("adm2021", 0, args).data, args)  # prints the floor's row
    return
  results, save = resumable_results(args.out, {"runs": {}})
  if args.report_only:
    report(results, args)
    return
  results.update(environment=environment(), args=vars(args))

  seeds = [int(s) for s in args.seeds.split(",")]
  names = args.recipes.split(",")
  unknown = [n for n in names if n not in RECIPES]
  if unknown:
    raise SystemExit(f"error: unknown recipe {unknown[0]!r}; choose from {', '.join(RECIPES)}")
  judge = None
  for name in names:
    for seed in seeds:
      key = f"{name}/seed{seed}"
      run = results["runs"].setdefault(key, {"recipe": name, "seed": seed,
                                             "overrides": RECIPES[name]})
      timing = train(name, seed, args)
      run.update({k: v for k, v in timing.items() if k != "wall_seconds" or "wall" not in run})
      save()
      if args.train_only:
        continue
      if judge is None:
        judge = Judge(recipe_config(name, seed, args).data, args)
        results["floor"] = judge.floor
      evaluate(key, timing["workdir"], judge, results, args, save)
  report(results, args)


def curves(results, recipe: str, sampler: str, metric: str):
  """{seed: (steps, values)} of one recipe's runs."""
  found = {}
  for run in results["runs"].values():
    if run["recipe"] != recipe:
      continue
    rows = sorted((r for r in run.get("evals", []) if r["sampler"] == sampler),
                  key=lambda r: r["step"])
    found[run["seed"]] = ([r["step"] for r in rows], [r[metric] for r in rows])
  return found


def mean_curve(found) -> tuple[list, list]:
  """The steps every seed reached and the seeds' mean there."""
  if not found:
    return [], []
  common = sorted(set.intersection(*(set(s) for s, _ in found.values())))
  values = [np.mean([v[s.index(step)] for s, v in found.values()]) for step in common]
  return common, values


def report(results, args) -> None:
  """The curves' PNG and the table of the last step, printed as markdown."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  recipes = sorted({r["recipe"] for r in results["runs"].values()}, key=list(RECIPES).index)
  folder = pathlib.Path(args.figures)
  folder.mkdir(parents=True, exist_ok=True)
  fig, axes = plt.subplots(len(SAMPLERS), len(METRICS), figsize=(15, 4 * len(SAMPLERS)))
  for row, sampler in enumerate(SAMPLERS):
    for col, metric in enumerate(METRICS):
      ax = axes[row, col]
      for i, recipe in enumerate(recipes):
        color = plt.cm.tab20(i % 20)  # more recipes than the 10 default colors
        found = curves(results, recipe, sampler, metric)
        for steps, values in found.values():
          ax.plot(steps, values, color=color, alpha=0.3, lw=1)
        steps, values = mean_curve(found)
        ax.plot(steps, values, "o-", color=color, label=recipe)
      if "floor" in results and metric in results["floor"]:
        ax.axhline(results["floor"][metric], color="gray", ls="--", label="data (train split)")
      ax.set_xlabel("training steps")
      ax.set_ylabel(metric.replace("_", " "))
      ax.set_title(sampler)
      if metric == "fd":
        ax.set_yscale("log")
  for ax in axes.ravel():
    ax.grid(alpha=0.3)
  # One legend beside the panels: inside, it hid points of some recipes.
  fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="center right", fontsize=9)
  fig.tight_layout(rect=(0, 0, 0.86, 1))
  fig.savefig(folder / "curves.png", dpi=100)
  print("\n".join(table(results, recipes)))  # noqa: T201
  print("\n".join(by_step(results, recipes)))  # noqa: T201


def by_step(results, recipes, sampler="ddpm100") -> list[str]:
  """FD and class accuracy of each recipe at every measured step (seeds' mean)."""
  steps = sorted({r["step"] for run in results["runs"].values() for r in run.get("evals", [])})
  rows = []
  for recipe in recipes:
    fd = dict(zip(*mean_curve(curves(results, recipe, sampler, "fd"))))
    accuracy = dict(zip(*mean_curve(curves(results, recipe, sampler, "class_accuracy"))))
    rows.append([recipe] + [f"{fd[s]:.0f} / {accuracy[s]:.2f}" if s in fd else ""
                            for s in steps])
  return markdown_table([f"{sampler}: FD / class accuracy"] + [f"step {s}" for s in steps],
                        rows)


def table(results, recipes) -> list[str]:
  """Each recipe at its last common step: the seeds' mean of each metric."""
  header = ["recipe", "step", "s/step"] + [f"{s} {m}" for s in SAMPLERS for m in METRICS]
  rows = []
  for recipe in recipes:
    runs = [r for r in results["runs"].values() if r["recipe"] == recipe]
    per_step = [r["seconds_per_step"] for r in runs if "seconds_per_step" in r]
    cells, last = [], ""
    for sampler in SAMPLERS:
      for metric in METRICS:
        steps, values = mean_curve(curves(results, recipe, sampler, metric))
        cells.append(f"{values[-1]:.3g}" if values else "")
        last = steps[-1] if steps else last
    rows.append([f"{recipe} ({len(runs)} seeds)", last,
                 f"{np.mean(per_step):.3f}" if per_step else ""] + cells)
  return markdown_table(header, rows)


if __name__ == "__main__":
  main()
