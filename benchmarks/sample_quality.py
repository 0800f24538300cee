"""Sample quality of the main job's model against the number of steps, the
data floor, and bits per dim: docs/results.md.

The main job's model (configs/shapes_class_cond.py, `bash launch/quickstart.sh
main`, or the guidance benchmark's runs/guidance/shapes: the same config) is
sampled `--num` times (random classes, seed 0) at each number of respaced
steps for three samplers, the DDIM paper's table:

- DDIM, eta 0 (deterministic);
- DDIM, eta 1 (ancestral sampling with beta~, the posterior variance);
- ancestral (DDPM) with the `fixed_large` variance, beta_t (the DDIM paper's
  sigma-hat row).

Each set is measured against the test split in the shipped evaluator's
features (FD in evaluator features, not FID: the Inception weights cannot be
had offline), with KID and its standard error, precision and recall (k = 3)
and class accuracy. The data floor is the same measurement of the train
split against the test split: the score of a model that copies its
training set. Bits per dim is the bound over all 1000 steps on test images.

    python benchmarks/sample_quality.py --workdir=runs/guidance/shapes \
        --out=benchmarks/results/sample_quality_cpu.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from common import environment, markdown_table, save_figure  # noqa: E402
from diffusion_jax import visualize  # noqa: E402
from diffusion_jax.data import pipeline  # noqa: E402
from diffusion_jax.evaluation import eval_mode, metrics  # noqa: E402
from diffusion_jax.evaluation import evaluator as evaluator_lib  # noqa: E402
from diffusion_jax.inference import loading, outputs  # noqa: E402
from diffusion_jax.inference.sampler import Sampler, SampleSettings  # noqa: E402

SAMPLERS = {"DDIM, eta 0": dict(method="ddim", eta=0.0),
            "DDIM, eta 1": dict(method="ddim", eta=1.0),
            "ancestral, fixed_large": dict(method="ddpm", variance="fixed_large"),
            "DPM-Solver++ 2M": dict(method="dpmpp_2m"),
            "DPM-Solver++ 2M SDE": dict(method="dpmpp_2m_sde")}
STEPS = (10, 25, 50, 100, 250)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs/guidance/shapes")
  parser.add_argument("--num", type=int, default=1000, help="samples per point")
  parser.add_argument("--steps", default=",".join(map(str, STEPS)))
  parser.add_argument("--long", type=int, default=1000,
                      help="one more point at this many steps, DDIM eta 0 only (0: none)")
  parser.add_argument("--bpd_num", type=int, default=256, help="test images for bits per dim")
  parser.add_argument("--batch", type=int, default=250)
  parser.add_argument("--out", default="benchmarks/results/sample_quality_cpu.json")
  parser.add_argument("--figures", default="docs/results")
  parser.add_argument("--report", default="docs/results.md",
                      help="the markdown report written from the results")
  parser.add_argument("--guidance", default="benchmarks/results/guidance_cpu.json",
                      help="the guidance sweep's results, whose FD columns the report quotes")
  parser.add_argument("--report_only", action="store_true",
                      help="only rewrite the plot and --report from --out")
  return parser.parse_args(argv)


def split_images(data_config, split: str, num: int) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 images, labels) of the first `num` examples of a split."""
  images, examples = pipeline.split_examples(data_config, split, num)
  return visualize.to_uint8(images), np.array([int(e["label"]) for e in examples])


def measured(name, images, labels, real_features, net, evaluator, eval_config) -> dict:
  fake = net(images)
  row = {"setting": name, "num": len(images),
         **eval_mode.measure(real_features, fake, eval_config)}
  if labels is not None:
    row["class_accuracy"] = round(float(metrics.judge(evaluator, images, labels)["accuracy"]),
                                  4)
  print(json.dumps(row), flush=True)  # noqa: T201
  return row


def draw(bundle, sampler_kwargs, steps, args) -> tuple[np.ndarray, np.ndarray]:
  spec = bundle.spec
  kwargs = dict(sampler_kwargs)
  variance = kwargs.pop("variance", None)
  if variance is not None:
    spec = dataclasses.replace(spec, variance=variance)
  settings = SampleSettings.of(bundle.config.sample, steps=str(steps), **kwargs)
  labels = outputs.many_labels(spec.num_classes, args.num, 0)
  images = outputs.sample_many(Sampler(spec), bundle.params, settings, args.num, args.batch,
                               0, labels, progress=False)
  return images, labels


def main(argv=None):
  args = parse_args(argv)
  if args.report_only:
    results = json.loads(pathlib.Path(args.out).read_text())
    plot(results, pathlib.Path(args.figures))
    write_report(results, args)
    return
  bundle = loading.load(args.workdir)
  eval_config = ml_collections.ConfigDict({"k": 3, "kid_subsets": 100,
                                           "kid_subset_size": 1000})
  evaluator_name = eval_mode.shipped_evaluator_for(bundle.config.data.name)
  evaluator = evaluator_lib.load_evaluator(evaluator_name)
  net = lambda images: evaluator_lib.features(evaluator, images)  # noqa: E731
  test, _ = split_images(bundle.config.data, "test", 10 ** 6)
  real = net(test)
  results = {"environment": environment(), "args": vars(args), "model": repr(bundle),
             "target": bundle.config.diffusion.parameterization,
             "features": f"evaluator {evaluator_name} (FD in evaluator features, not FID)",
             "reference": f"{bundle.config.data.name} test split ({len(test)} images)"}
  start = time.perf_counter()
  train, train_labels = split_images(bundle.config.data, "train", args.num)
  results["floor"] = measured("train split (data floor)", train, train_labels, real, net,
                              evaluator, eval_config)
  rows = []
  for name, kwargs in SAMPLERS.items():
    points = [int(s) for s in args.steps.split(",")]
    if args.long and name == "DDIM, eta 0":
      points.append(args.long)
    for steps in points:
      tick = time.perf_counter()
      images, labels = draw(bundle, kwargs, steps, args)
      row = measured(name, images, labels, real, net, evaluator, eval_config)
      row.update(steps=steps, seconds=round(time.perf_counter() - tick, 1))
      rows.append(row)
  results["steps"] = rows
  if args.bpd_num:
    tick = time.perf_counter()
    config = bundle.config.copy_and_resolve_references()
    results["bpd"] = eval_mode.bits_per_dim(bundle, config, args.bpd_num, 0)
    results["bpd"]["seconds"] = round(time.perf_counter() - tick, 1)
    print(json.dumps(results["bpd"]), flush=True)  # noqa: T201
  results["seconds"] = round(time.perf_counter() - start, 1)
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text(json.dumps(results, indent=1))
  plot(results, pathlib.Path(args.figures))
  write_report(results, args)
  print("\n".join(table(results)))  # noqa: T201


def plot(results, folder: pathlib.Path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  folder.mkdir(parents=True, exist_ok=True)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for name in SAMPLERS:
    rows = [r for r in results["steps"] if r["setting"] == name]
    steps = [r["steps"] for r in rows]
    axes[0].plot(steps, [r["fd"] for r in rows], "o-", label=name)
    axes[1].errorbar(steps, [r["kid"] for r in rows], [r["kid_se"] for r in rows], fmt="o-",
                     label=name)
  for ax, key in zip(axes, ("fd", "kid")):
    ax.axhline(results["floor"][key], color="gray", ls="--", label="data floor (train split)")
    ax.set_xscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel(f"{key.upper()} in evaluator features")
  save_figure(fig, axes, folder / "steps.png")


def table(results) -> list[str]:
  keys = ("setting", "steps", "fd", "kid", "kid_se", "precision", "recall", "class_accuracy",
          "seconds")
  rows = [[results["floor"].get(k, "") for k in keys]]
  rows += [[r.get(k, "") for k in keys] for r in results["steps"]]
  return markdown_table(keys, rows)


def kid_reading(row) -> str:
  if abs(row["kid"]) < 3 * row["kid_se"]:
    return "zero within 3 standard errors, as two samples of one distribution should be"
  return f"{abs(row['kid']) / row['kid_se']:.0f} standard errors from zero"


def write_report(results, args) -> None:
  """docs/results.md: the command, device, time, the table, the plot, the
  floor and bits per dim, from the results alone."""
  env, run = results["environment"], results["args"]
  floor = results["floor"]
  rows = results["steps"]
  best = min(rows, key=lambda r: r["fd"])
  command = (f"python benchmarks/sample_quality.py --workdir={run['workdir']} "
             f"--num={run['num']} --steps={run['steps']} --long={run['long']} "
             f"--bpd_num={run['bpd_num']}")
  lines = [
      "# Sample quality of the main job's model",
      "",
      "Made by `benchmarks/sample_quality.py` (this page is its output):",
      "",
      f"    {command}",
      "",
      f"- model: {results['model']} ({run['workdir']}: the main job's network and data, "
      f"`configs/shapes_class_cond.py`; {results.get('target', 'eps')}-prediction);",
      f"- features: {results['features']}; reference: {results['reference']};",
      f"- {run['num']} samples per point (random classes, seed 0): the CPU makes more too "
      "slow; KID, unlike FD, is unbiased at this size;",
      f"- device: {env['device']} ({env['backend']}, {env['device_count']} devices), "
      f"jax {env['jax']}, commit {env['commit']}; {results['seconds'] / 60:.0f} minutes in all.",
      "",
      *([f"**Partial:** {results['partial']}", ""] if results.get("partial") else []),
      *([f"**Note:** {results['note']}", ""] if results.get("note") else []),
      "## Against the number of sampling steps",
      "",
      "DDIM at eta 0, DDIM at eta 1 (ancestral with the posterior variance beta~) and "
      "ancestral sampling with `fixed_large` (beta_t), the rows of the DDIM paper's table; "
      "then DPM-Solver++ 2M and its SDE variant (one network evaluation a step, "
      "[samplers.md](samplers.md)). "
      "The first row is the data floor: the train split measured as if it were samples.",
      "",
      *table(results),
      "",
      "![FD and KID against steps](results/steps.png)",
      "",
      "## Reading",
      "",
      f"- The data floor: FD {floor['fd']:.1f}, KID {floor['kid']:.1f} ± "
      f"{floor['kid_se']:.1f} ({kid_reading(floor)}), precision "
      f"{floor['precision']:.2f}, recall {floor['recall']:.2f}.",
      f"- The best point is {best['setting']} at {best['steps']} steps: FD {best['fd']:.1f}, "
      f"{best['fd'] / max(floor['fd'], 1e-9):.1f} times the floor; KID {best['kid']:.1f} ± "
      f"{best['kid_se']:.1f}. That gap is the model's, not the metric's: the samples' "
      "class accuracy is "
      f"{best.get('class_accuracy', float('nan')):.2f} where the real images' is "
      f"{floor.get('class_accuracy', float('nan')):.2f}.",
  ]
  per_sampler = [min((r for r in rows if r["setting"] == name), key=lambda r: r["fd"])
                 for name in SAMPLERS if any(r["setting"] == name for r in rows)]
  lines.append("- Each sampler's best point: " + "; ".join(
      f"{r['setting']}, FD {r['fd']:.1f} at {r['steps']} steps (class accuracy "
      f"{r.get('class_accuracy', float('nan')):.2f})" for r in per_sampler) + "." +
      ("" if any(r["steps"] > 50 for r in per_sampler) else
       " Past 50 steps none improves: the gap is the model's, not the discretisation's."))
  lines += deterministic_reading(rows)
  if "bpd" in results:
    b = results["bpd"]
    lines += ["", "## Bits per dimension", "",
              f"The bound over all 1000 steps (prior KL + every L_t + the decoder NLL) on "
              f"{b['bpd_images']} test images: **{b['bpd']:.3f} ± {b['bpd_se']:.3f}** bits per "
              f"dim ({b['seconds']:.0f} s). The model was trained on the unweighted "
              f"{results.get('target', 'eps')} loss with a fixed variance, which Improved "
              "DDPM shows is far from the best likelihood; the number is a bound, reported "
              "as improved-diffusion does."]
  lines += guidance_section(pathlib.Path(args.guidance))
  pathlib.Path(args.report).write_text("\n".join(lines) + "\n")


STOCHASTIC = ("DDIM, eta 1", "ancestral, fixed_large", "DPM-Solver++ 2M SDE")


def deterministic_reading(rows) -> list[str]:
  """DDIM at eta 0 against the best stochastic sampler at each step count
  (the recipe issue's target: within 1.3x at 50 steps)."""
  parts = []
  for r in (r for r in rows if r["setting"] == "DDIM, eta 0"):
    peers = [q for q in rows if q["setting"] in STOCHASTIC and q["steps"] == r["steps"]]
    if peers:
      best = min(peers, key=lambda q: q["fd"])
      parts.append(f"{r['steps']} steps: FD {r['fd']:.1f} against {best['fd']:.1f} "
                   f"({best['setting']}), {r['fd'] / best['fd']:.2f}x")
  return [("- DDIM at eta 0 (deterministic) against the best stochastic sampler at the "
           "same number of steps: " + "; ".join(parts) + ".")] if parts else []


def guidance_section(path: pathlib.Path) -> list[str]:
  """The guidance sweep's tables (benchmarks/guidance_sweep.py), where its
  results carry the distance columns."""
  if not path.exists():
    return []
  results = json.loads(path.read_text())
  sweeps = {n: s for n, s in results["sweeps"].items() if "fd" in s["rows"][0]}
  if not sweeps:
    return []
  import guidance_sweep
  run = results["runs"][-1]
  env = run["environment"]
  return ["", "## Against the guidance scale", "",
          "The fidelity-diversity trade-off of classifier guidance and CFG: evaluator "
          "accuracy, FD, KID, precision and recall for each scale, on one set of samples "
          f"per setting ({run['per_class']} per class, {run['method']} {run['steps']} steps), "
          "against the test split, beside the data floor at the same number of images. "
          "Made by `python benchmarks/guidance_sweep.py --append --sweeps=...` "
          f"({env['device']}, jax {env['jax']}, commit {env['commit']}); the sweeps that "
          "predate the distance columns are left out here (see docs/guidance.md). "
          "The sweeps' models are the ones `benchmarks/guidance_models.sh` trains "
          "from the configs (their recipe since 2026-12-08: v-prediction, the main "
          "job's lr 8e-3), not the model above: the shipped model guided is on its "
          "card (docs/models.md).",
          "", "![trade-off](guidance/tradeoff.png)",
          guidance_sweep.markdown({**results, "sweeps": sweeps, "filter": None})]


if __name__ == "__main__":
  main()
