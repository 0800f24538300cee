"""The fidelity-diversity trade-off of guidance, and the data filter, measured.

Samples the models that `benchmarks/guidance_models.sh` trains, at every
classifier scale s in {0, 0.5, 1, 2, 5, 10} (a conditional and an
unconditional model, guided by the noisy classifier) and every CFG scale in
{1, 1.5, 2, 3, 5} (the conditional model), on `shapes` and `digits`, and
judges the samples with the shipped clean-image evaluators (never with the
classifier that guided them; `evaluation.judge`):

- accuracy: how often the evaluator sees the class asked for;
- feature_distance: the mean distance between two samples of one class in
  the evaluator's feature space (diversity);
- spread_size, spread_position (shapes): how evenly the attributes the label
  leaves free are spread within a class (normalized entropy; 1 = uniform);
- fd, kid (with kid_se), precision, recall (k = 3): the samples against the
  test split in the evaluator's features (FD in evaluator features, not
  FID), the fidelity-diversity curve as distances.

A "real data" row judges the test split the same way; a "data floor" row
measures as many train images as a setting draws against the test split
(FD is biased at small N: compare rows with the floor at the same N). The data filter part
samples three unconditional shapes models (trained on all data, without
class 0 by label, without what the classifier calls class 0) and counts how
often the evaluator sees class 0 (red circle).

Every setting draws the same labels and the same noise (seed 0), so rows
differ only by the guidance. Writes JSON (--out), a grid PNG per sweep (a
row per setting) and a plot into --figures, and prints markdown tables.

    bash benchmarks/guidance_models.sh
    python benchmarks/guidance_sweep.py --out=benchmarks/results/guidance_cpu.json
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
from diffusion_jax import evaluation, filtering, visualize  # noqa: E402
from diffusion_jax.data import pipeline, shapes  # noqa: E402
from diffusion_jax.evaluation import eval_mode, metrics  # noqa: E402
from diffusion_jax.inference import loading  # noqa: E402

CLASSIFIER_SCALES = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0)
CFG_SCALES = (1.0, 1.5, 2.0, 3.0, 5.0)
EVALUATORS = {"shapes": "shapes16", "digits": "digits16"}
GRID_CLASSES = {"shapes": (0, 7, 14), "digits": (1, 4, 7)}  # 4 samples each per row
DROPPED = 0  # the class the filtered models never saw (shapes: red circle)
FILTER_MODELS = (("unfiltered", "shapes_uncond"), ("by label", "shapes_uncond_drop_by_label"),
                 ("by classifier", "shapes_uncond_drop_by_classifier"))


@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str
  family: str  # "shapes" or "digits"
  model: str  # the workdir under --runs
  knob: str  # "classifier_scale" or "guidance_scale"
  values: tuple
  classifier: str = ""  # the noisy classifier's workdir under --runs


SWEEPS = (
    Sweep("shapes_conditional_classifier", "shapes", "shapes", "classifier_scale",
          CLASSIFIER_SCALES, "shapes_classifier"),
    Sweep("shapes_unconditional_classifier", "shapes", "shapes_uncond", "classifier_scale",
          CLASSIFIER_SCALES, "shapes_classifier"),
    Sweep("shapes_cfg", "shapes", "shapes", "guidance_scale", CFG_SCALES),
    Sweep("digits_conditional_classifier", "digits", "digits", "classifier_scale",
          CLASSIFIER_SCALES, "digits_classifier"),
    Sweep("digits_unconditional_classifier", "digits", "digits_uncond", "classifier_scale",
          CLASSIFIER_SCALES, "digits_classifier"),
    Sweep("digits_cfg", "digits", "digits", "guidance_scale", CFG_SCALES),
)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", default="runs/guidance", help="the trained models' workdirs")
  parser.add_argument("--out", default="benchmarks/results/guidance_cpu.json")
  parser.add_argument("--figures", default="docs/guidance", help="grids and plots go here")
  parser.add_argument("--per_class", type=int, default=8, help="samples per class a setting")
  parser.add_argument("--filter_num", type=int, default=540, help="samples per filter model")
  parser.add_argument("--sweeps", default=",".join(s.name for s in SWEEPS),
                      help="comma-separated sweep names; 'none' for the filter only")
  parser.add_argument("--method", default="ddpm", help="the sampler of every setting")
  parser.add_argument("--steps", default="50", help="sampling steps (respaced)")
  parser.add_argument("--append", action="store_true",
                      help="add these sweeps to the results already in --out")
  parser.add_argument("--replot", action="store_true",
                      help="only redraw the plot and tables from --out")
  parser.add_argument("--data_dir", default=None)
  return parser.parse_args(argv)


def split_examples(evaluator, data_dir, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images in [-1, 1], labels) of a split of the evaluator's dataset."""
  images, examples = pipeline.split_examples(evaluator.config.data, split, data_dir=data_dir)
  return images, np.array([e["label"] for e in examples])


class Reference:
  """The test split in the evaluator's features, against which every
  setting's samples get FD, KID, precision and recall (k = 3)."""

  def __init__(self, evaluator, data_dir):
    self.evaluator = evaluator
    self.images, self.labels = split_examples(evaluator, data_dir, "test")
    self.features = evaluation.features(evaluator, self.images)
    self.train_images, self.train_labels = split_examples(evaluator, data_dir, "train")

  def distances(self, images) -> dict:
    config = ml_collections.ConfigDict({"k": 3, "kid_subsets": 100, "kid_subset_size": 1000})
    return eval_mode.measure(self.features, evaluation.features(self.evaluator, images), config)

  def real_data_row(self) -> dict:
    """The evaluator's judgement of the test split (the ceiling of accuracy);
    its distances are those of the first train images, as many as a
    setting draws (`num`): the data floor at the sweep's sample size."""
    return {"setting": "real data (test split)", "num": len(self.labels),
            **metrics_of(self.evaluator, self.images, self.labels)}

  def floor_row(self, num: int) -> dict:
    images, labels = self.train_images[:num], self.train_labels[:num]
    return {"setting": f"data floor ({num} train images)", "num": num,
            **metrics_of(self.evaluator, images, labels), **self.distances(images)}


def metrics_of(evaluator, images, labels) -> dict:
  return {k: round(v, 4) for k, v in evaluation.judge(evaluator, images, labels).items()}


def grid_rows(images: np.ndarray, labels: np.ndarray, classes) -> np.ndarray:
  """[4 * len(classes), S, S, C]: the first 4 samples of each grid class."""
  picks = np.concatenate([np.flatnonzero(labels == c)[:4] for c in classes])
  return images[picks]


def run_sweep(sweep: Sweep, args, reference: Reference) -> tuple[list[dict], list[np.ndarray]]:
  """(a row per setting, a grid row per setting)."""
  evaluator = reference.evaluator
  bundle = loading.load(pathlib.Path(args.runs) / sweep.model)
  classifier = (loading.load(pathlib.Path(args.runs) / sweep.classifier, kind="classifier")
                if sweep.classifier else None)
  num_classes = evaluator.info.num_classes
  labels = np.tile(np.arange(num_classes), args.per_class)  # [C * per_class]
  rows, grids = [], []
  for value in sweep.values:
    knobs = {sweep.knob: value}
    start = time.perf_counter()
    images = bundle.sample(labels=labels, seed=0, classifier=classifier, method=args.method,
                           steps=args.steps, **knobs)
    seconds = time.perf_counter() - start
    row = {"setting": f"{sweep.knob} {value:g}", sweep.knob: value, "num": len(labels),
           "seconds": round(seconds, 1), **metrics_of(evaluator, images, labels),
           **reference.distances(images)}
    print(json.dumps({"sweep": sweep.name, **row}), flush=True)  # noqa: T201
    rows.append(row)
    grids.append(grid_rows(images, labels, GRID_CLASSES[sweep.family]))
  return rows, grids


def filter_rows(args, evaluator) -> list[dict]:
  """How often each unconditional model draws the class its data lacked."""
  rows = []
  for name, workdir in FILTER_MODELS:
    bundle = loading.load(pathlib.Path(args.runs) / workdir)
    images = bundle.sample(num=args.filter_num, seed=0, method=args.method, steps=args.steps)
    seen = metrics.predicted_labels(evaluation.predict(evaluator, images))
    row = {"filter": name, "model": workdir, "num": args.filter_num,
           "dropped_class_fraction": round(float(np.mean(seen == DROPPED)), 4),
           "dropped_class_count": int(np.sum(seen == DROPPED))}
    row.update(filter_accuracy(bundle.config, args.data_dir))
    print(json.dumps(row), flush=True)  # noqa: T201
    rows.append(row)
  return rows


def filter_accuracy(model_config, data_dir) -> dict:
  """For a classifier filter: which test images of the model's own dataset
  it drops (of the class, and of the others)."""
  if not model_config.data.filter.classifier_workdir:
    return {}
  drop_fn = filtering.classifier_drop_fn(model_config.data.filter)
  data_config = model_config.data.copy_and_resolve_references()
  if data_dir:
    data_config.data_dir = data_dir
  source, _ = pipeline.load_source(data_config, "test")
  examples = [source[i] for i in range(len(source))]
  dropped = np.asarray(drop_fn(examples), bool)
  is_class = np.array([e["label"] == DROPPED for e in examples])
  return {"test_split_class_dropped": round(float(dropped[is_class].mean()), 4),
          "test_split_others_dropped": round(float(dropped[~is_class].mean()), 4)}


def write_grid(sweep: Sweep, grids: list[np.ndarray], folder: pathlib.Path) -> str:
  titles = [f"{'s' if sweep.knob == 'classifier_scale' else 'cfg'} = {v:g}"
            for v in sweep.values]
  path = folder / f"{sweep.name}.png"
  visualize.image_grid(np.stack(grids), titles, title_width=70).save(path)
  return str(path)


def plot(results: dict, folder: pathlib.Path) -> str:
  """Accuracy against each scale, and two diversity measures against accuracy."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 5, figsize=(25, 4.4))
  for index, sweep in enumerate(SWEEPS):
    if sweep.name not in results["sweeps"]:
      continue
    rows = results["sweeps"][sweep.name]["rows"]
    x = [r[sweep.knob] for r in rows]
    acc = [r["accuracy"] for r in rows]
    real = results["real_data"][sweep.family]["feature_distance"]
    style = dict(color=f"C{index}", label=sweep.name.replace("_", " "))
    fmt = "-o" if sweep.family == "shapes" else "--s"
    axes[0 if sweep.knob == "classifier_scale" else 1].plot(x, acc, fmt, **style)
    if "spread_size" in rows[0]:
      axes[2].plot(acc, [r["spread_size"] for r in rows], fmt, **style)
    axes[3].plot(acc, [r["feature_distance"] / real for r in rows], fmt, **style)
    if "precision" in rows[0]:
      axes[4].plot([r["recall"] for r in rows], [r["precision"] for r in rows], fmt, **style)
  axes[0].set_xscale("symlog", linthresh=0.5)
  axes[0].set_xticks(CLASSIFIER_SCALES, [f"{s:g}" for s in CLASSIFIER_SCALES])
  axes[0].set(xlabel="classifier scale s", ylabel="evaluator accuracy",
              title="classifier guidance")
  axes[1].set(xlabel="CFG scale", ylabel="evaluator accuracy", title="classifier-free guidance")
  axes[2].set(xlabel="evaluator accuracy (fidelity)", ylabel="spread of size within a class",
              title="diversity left free by the label (shapes)")
  axes[3].set(xlabel="evaluator accuracy (fidelity)",
              ylabel="within-class feature distance / real data's", title="feature distance")
  axes[4].set(xlabel="recall (diversity)", ylabel="precision (fidelity)",
              title="k-NN precision and recall (k = 3), test split")
  return save_figure(fig, axes, folder / "tradeoff.png")


def markdown(results: dict) -> str:
  lines = []
  for name, sweep in results["sweeps"].items():
    family = sweep["family"]
    columns = [c for c in ("accuracy", "accuracy_shape", "accuracy_color", "feature_distance",
                           "spread_size", "spread_position", "fd", "kid", "kid_se",
                           "precision", "recall", "seconds")
               if c in sweep["rows"][0]]
    floor = [results["data_floor"][family]] if "fd" in columns and \
        family in results.get("data_floor", {}) else []
    rows = [[row["setting"]] + [row.get(c, "") for c in columns]
            for row in sweep["rows"] + [results["real_data"][family]] + floor]
    lines += [f"\n{name}\n", *markdown_table(("setting",) + tuple(columns), rows)]
  if results.get("filter"):
    lines += ["\nfilter\n",
              "| filter | class 0 in samples | test class 0 dropped | others dropped |",
              "| --- | --- | --- | --- |"]
    for row in results["filter"]:
      lines.append(f"| {row['filter']} | {row['dropped_class_count']}/{row['num']} "
                   f"({row['dropped_class_fraction']:.1%}) | "
                   f"{row.get('test_split_class_dropped', '')} | "
                   f"{row.get('test_split_others_dropped', '')} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  args = parse_args(argv)
  folder = pathlib.Path(args.figures)
  folder.mkdir(parents=True, exist_ok=True)
  if args.replot:
    results = json.loads(pathlib.Path(args.out).read_text())
    plot(results, folder)
    print(markdown(results))  # noqa: T201
    return
  start = time.perf_counter()
  evaluators = {f: evaluation.load_evaluator(n) for f, n in EVALUATORS.items()}
  chosen = [s for s in SWEEPS if s.name in args.sweeps.split(",")]
  out = pathlib.Path(args.out)
  results = {"real_data": {}, "sweeps": {}, "runs": []}
  if args.append and out.exists():
    results = json.loads(out.read_text())
  results["evaluators"] = EVALUATORS
  results["runs"].append({"environment": environment(), "sweeps": [s.name for s in chosen],
                          "per_class": args.per_class, "seed": 0, "method": args.method,
                          "steps": args.steps, "filter_num": args.filter_num})
  references = {}
  for family in sorted({s.family for s in chosen}):
    references[family] = Reference(evaluators[family], args.data_dir)
    results["real_data"][family] = references[family].real_data_row()
    num = args.per_class * evaluators[family].info.num_classes
    results.setdefault("data_floor", {})[family] = references[family].floor_row(num)
  for sweep in chosen:
    rows, grids = run_sweep(sweep, args, references[sweep.family])
    results["sweeps"][sweep.name] = {
        "family": sweep.family, "model": sweep.model, "classifier": sweep.classifier,
        "method": args.method, "steps": args.steps, "per_class": args.per_class, "rows": rows,
        "grid": write_grid(sweep, grids, folder),
        "grid_rows": [shapes.label_name(c) if sweep.family == "shapes" else str(c)
                      for c in GRID_CLASSES[sweep.family]]}
  if args.filter_num:
    results["filter"] = filter_rows(args, evaluators["shapes"])
  if results["sweeps"]:
    results["plot"] = plot(results, folder)
  results["runs"][-1]["seconds"] = round(time.perf_counter() - start, 1)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=2) + "\n")
  print(markdown(results))  # noqa: T201


if __name__ == "__main__":
  main()
