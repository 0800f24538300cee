"""Text to image on `shapes`: classifier-free guidance against CLIP guidance,
and prompt schedules, measured.

Samples the text-to-image model (configs/shapes_text2im.py) for captions of
the test split it never trained on, at every CFG scale in {1, 2, 3, 5, 8}
and, with the conditional model (CFG off, as GLIDE's CLIP-guided notebook),
at every CLIP scale of a sweep, guided by the noised CLIP
(configs/shapes_clip.py). The shipped clean-image evaluator judges every
sample (never the CLIP that guided it). On one-object scenes (`shapes16`,
`metrics.judge_captions`):

- caption_accuracy: how often it sees every attribute the caption names
  (shape and color, and size and place where named);
- accuracy_<attribute>: per attribute, over the captions that name it;
- feature_distance: the mean distance between two samples of one prompt in
  the evaluator's features (diversity); spread_size, spread_position: how
  evenly the attributes a prompt leaves free vary (normalized entropy).

On scenes of 0 to 3 objects (a model trained on "shapes/scenes_16"; the
scene evaluator `scenes16`, `metrics.judge_scene_captions`): caption
accuracy (every object named, with its attributes, place and relation, and
no other), count accuracy, and caption accuracy per phrasing (places,
relation, counts, plain, empty) and per number of objects named.

A "real data" row judges the test images against their own captions.
The prompt schedule part samples one prompt pair with `switch_at` from 0 to
1 and counts whose position and whose color the samples take (a scene
evaluator reads a sample as one object only where it sees exactly one).

Every setting draws the same prompts and noise (seed 0). Writes JSON (--out),
grids and a plot into --figures, and prints markdown tables.

    python benchmarks/text_guidance.py --out=benchmarks/results/text_guidance_cpu.json
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from common import environment, markdown_table, save_figure  # noqa: E402
from diffusion_jax import evaluation, visualize  # noqa: E402
from diffusion_jax.data import pipeline, scenes, shapes  # noqa: E402
from diffusion_jax.evaluation import metrics  # noqa: E402
from diffusion_jax.inference import loading  # noqa: E402

CFG_SCALES = (1.0, 2.0, 3.0, 5.0, 8.0)
CLIP_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0)
SWITCHES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
SCHEDULE = ("a large red circle in the top left", "a large blue square in the bottom right")
# The table's columns, where measured (one-object or scene judge).
COLUMNS = ("caption_accuracy", "object_accuracy", "count_accuracy", "accuracy_shape",
           "accuracy_color", "accuracy_size", "accuracy_position", "accuracy_places",
           "accuracy_relation", "accuracy_counts", "accuracy_plain", "accuracy_empty",
           "accuracy_1_objects", "accuracy_2_objects", "accuracy_3_objects", "feature_distance",
           "spread_size", "spread_position", "seconds")
GRID_PROMPTS = 4  # prompts shown per grid row, 2 samples each


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--text2im", default="runs/text2im", help="the text-to-image workdir")
  parser.add_argument("--clip", default="runs/clip",
                      help="the noised CLIP's workdir ('': no CLIP rows or sweep)")
  parser.add_argument("--evaluator", default="",
                      help="default: scenes16 for a scenes model, else shapes16")
  parser.add_argument("--out", default="benchmarks/results/text_guidance_cpu.json")
  parser.add_argument("--figures", default="docs/text2im", help="grids and plots go here")
  parser.add_argument("--prompts", type=int, default=24, help="distinct test captions")
  parser.add_argument("--per_prompt", type=int, default=6, help="samples per caption")
  parser.add_argument("--cfg_scales", default=",".join(f"{s:g}" for s in CFG_SCALES),
                      help="comma-separated; '' skips the sweep")
  parser.add_argument("--clip_scales", default=",".join(f"{s:g}" for s in CLIP_SCALES),
                      help="comma-separated; '' skips the sweep")
  parser.add_argument("--schedule_num", type=int, default=32,
                      help="samples per switch_at of the prompt schedule (0: skip)")
  parser.add_argument("--method", default="ddpm")
  parser.add_argument("--steps", default="100")
  parser.add_argument("--replot", action="store_true",
                      help="only redraw the plot and tables from --out")
  parser.add_argument("--schedule_only", action="store_true",
                      help="only redo the prompt schedule part, into --out")
  parser.add_argument("--data_dir", default=None)
  return parser.parse_args(argv)


def test_split(model_config, data_dir):
  """(images [N, S, S, C] in [-1, 1], captions [N], the examples) of the
  model's test split."""
  images, examples = pipeline.split_examples(model_config.data, "test", data_dir=data_dir)
  captions = [e["caption"].decode() if isinstance(e["caption"], bytes) else e["caption"]
              for e in examples]
  return images, captions, examples


def first_distinct(captions, count: int) -> list[str]:
  seen = []
  for caption in captions:
    if caption not in seen:
      seen.append(caption)
    if len(seen) == count:
      break
  return seen


def reads_scenes(evaluator) -> bool:
  """A scene evaluator (one head per grid cell), not a one-object one."""
  return "cell_0" in dict(evaluator.spec.model.attributes)


def judged(evaluator, images, prompts, prompt_ids) -> dict:
  if reads_scenes(evaluator):
    result = metrics.judge_scene_captions(evaluator, images,
                                          [prompts[i] for i in prompt_ids], prompt_ids)
  else:
    named = [shapes.parse_caption(prompts[i]) for i in prompt_ids]
    result = metrics.judge_captions(evaluator, images, named, prompt_ids)
  return {k: round(v, 4) for k, v in result.items()}


def caption_fits(caption: str, example) -> bool:
  """Whether a caption names only what a test example shows."""
  if "cell_shape" in example:
    cells = {k: np.asarray(example[k]) for k in ("cell_shape", "cell_color", "cell_size")}
    return scenes.caption_holds(scenes.parse_caption(caption), cells)
  return all(example[k] == v for k, v in shapes.parse_caption(caption).items())


def real_data_row(evaluator, images, captions) -> dict:
  distinct = sorted(set(captions))
  ids = np.array([distinct.index(c) for c in captions])
  return {"setting": "real data (test split)", "num": len(captions),
          **judged(evaluator, images, distinct, ids)}


def grid_row(images: np.ndarray, per_prompt: int) -> np.ndarray:
  """The first 2 samples of each of the first GRID_PROMPTS prompts."""
  picks = [p * per_prompt + k for p in range(GRID_PROMPTS) for k in range(2)]
  return images[picks]


def run_sweep(name, knob, values, bundle, clip, prompts, args, evaluator):
  """(a row per value, a grid row per value)."""
  ids = np.repeat(np.arange(len(prompts)), args.per_prompt)
  asked = [prompts[i] for i in ids]
  rows, grids = [], []
  for value in values:
    if knob == "guidance_scale":
      extra = {"guidance_scale": value}
    else:
      extra = {"guidance_scale": 1.0, "clip": clip, "clip_scale": value}
    start = time.perf_counter()
    images = bundle.sample(prompts=asked, seed=0, method=args.method, steps=args.steps,
                           **extra)
    row = {"setting": f"{knob} {value:g}", knob: value, "num": len(asked),
           "seconds": round(time.perf_counter() - start, 1),
           **judged(evaluator, images, prompts, ids)}
    print(json.dumps({"sweep": name, **row}), flush=True)  # noqa: T201
    rows.append(row)
    grids.append(grid_row(images, args.per_prompt))
  return rows, grids


def clip_rows(clip, images, captions, examples) -> list[dict]:
  """The noised CLIP's retrieval on the test split, at several noise levels:
  how often the caption it ranks first (of all the split's distinct
  captions) names only what the image shows."""
  import jax
  import jax.numpy as jnp

  from diffusion_jax import diffusion
  from diffusion_jax.models import clip as clip_lib
  from diffusion_jax.text import tokenizer as tok_lib
  distinct = sorted(set(captions))
  spec = clip.spec.model.spec
  tokens, lens = tok_lib.pad_and_lens(distinct, spec.text_ctx)
  z_text = clip_lib.text_embeddings(spec, clip.params, tokens, lens)  # [C, D]
  fits = np.array([[caption_fits(c, e) for c in distinct] for e in examples])  # [N, C]
  rows = []
  for t in (0, 100, 300, 500, 700, 900):
    noise = jax.random.normal(jax.random.PRNGKey(t), images.shape)
    steps = jnp.full((len(images),), t, jnp.int32)
    x_t = diffusion.q_sample(clip.spec.schedule, jnp.asarray(images), steps, noise)
    z_image = clip_lib.image_embeddings(spec, clip.params, x_t, steps)  # [N, D]
    best = np.asarray(jnp.argmax(z_image @ z_text.T, axis=-1))
    rows.append({"t": t, "top1_caption_fits": round(float(fits[np.arange(len(best)),
                                                                   best].mean()), 4)})
  print(json.dumps({"clip_retrieval": rows}), flush=True)  # noqa: T201
  return rows


def one_object_seen(evaluator, images) -> dict[str, np.ndarray]:
  """{"position", "color", "shape"}: int [N] of each sample's object; a
  scene evaluator's reading of a sample that does not hold exactly one
  object is -1 (no prompt's)."""
  if not reads_scenes(evaluator):
    return evaluation.predict(evaluator, images)
  cells = metrics.predicted_cells(evaluator, images)
  occupied = cells["cell_shape"] >= 0  # [N, 9]
  one = occupied.sum(1) == 1
  where = occupied.argmax(1)
  at = np.arange(len(images)), where
  return {"position": np.where(one, where, -1),
          "color": np.where(one, cells["cell_color"][at], -1),
          "shape": np.where(one, cells["cell_shape"][at], -1)}


def schedule_rows(bundle, evaluator, args) -> list[dict]:
  """Whose position, color and shape the samples take, against switch_at:
  the prompts' (as named), and the same noise's under either prompt alone
  (switch_at 1 and 0), which shows a layout kept even where the model does
  not place objects where a prompt says."""
  first, after = (shapes.parse_caption(p) for p in SCHEDULE)
  seen, rows = {}, []
  for switch_at in SWITCHES:
    images = bundle.sample(prompts=[SCHEDULE[0]] * args.schedule_num,
                           prompts_after=[SCHEDULE[1]] * args.schedule_num,
                           switch_at=switch_at, seed=0, method=args.method,
                           steps=args.steps)
    seen[switch_at] = one_object_seen(evaluator, images)
    row = {"switch_at": switch_at, "num": args.schedule_num, "grid": images[:8]}
    for attribute in ("position", "color", "shape"):
      row[f"{attribute}_first"] = round(float(np.mean(
          seen[switch_at][attribute] == first[attribute])), 4)
      row[f"{attribute}_after"] = round(float(np.mean(
          seen[switch_at][attribute] == after[attribute])), 4)
    rows.append(row)
  for row in rows:  # the same noise under the first prompt alone, and the second alone
    for name, alone in (("first_alone", max(SWITCHES)), ("after_alone", min(SWITCHES))):
      row[f"position_as_{name}"] = round(float(np.mean(
          seen[row["switch_at"]]["position"] == seen[alone]["position"])), 4)
    print(json.dumps({k: v for k, v in row.items() if k != "grid"}), flush=True)  # noqa: T201
  return rows


def run_schedule(bundle, evaluator, args, folder: pathlib.Path) -> dict:
  rows = schedule_rows(bundle, evaluator, args)
  grid = write_grid(folder / "prompt_schedule.png", [r.pop("grid") for r in rows],
                    [f"switch_at {r['switch_at']:g}" for r in rows])
  return {"prompts": SCHEDULE, "rows": rows, "grid": grid}


def write_grid(path: pathlib.Path, grids, titles) -> str:
  visualize.image_grid(np.stack(grids), titles).save(path)
  return str(path)


def plot(results: dict, folder: pathlib.Path) -> str:
  """Caption accuracy against each scale, and diversity against accuracy."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 4, figsize=(20, 4.4))
  real = results["real_data"]
  for index, (name, knob) in enumerate((("cfg", "guidance_scale"), ("clip", "clip_scale"))):
    if name not in results["sweeps"]:
      continue
    rows = results["sweeps"][name]["rows"]
    acc = [r["caption_accuracy"] for r in rows]
    style = dict(color=f"C{index}", label="classifier-free" if name == "cfg" else "CLIP")
    axes[index].plot([r[knob] for r in rows], acc, "-o", **style)
    axes[2].plot(acc, [r["feature_distance"] / real["feature_distance"] for r in rows], "-o",
                 **style)
    third = "count_accuracy" if "count_accuracy" in rows[0] else "spread_position"
    axes[3].plot(acc, [r.get(third, np.nan) for r in rows], "-o", **style)
  axes[0].set(xlabel="CFG scale", ylabel="caption accuracy", title="classifier-free guidance")
  axes[1].set_xscale("log")
  axes[1].set(xlabel="CLIP scale", ylabel="caption accuracy",
              title="CLIP guidance (conditional model)")
  axes[2].set(xlabel="caption accuracy (fidelity)",
              ylabel="within-prompt feature distance / real data's", title="diversity")
  if "count_accuracy" in real:
    axes[3].set(xlabel="caption accuracy (fidelity)", ylabel="count accuracy",
                title="as many objects as named")
  else:
    axes[3].set(xlabel="caption accuracy (fidelity)",
                ylabel="spread of position when unnamed", title="what the prompt leaves free")
  return save_figure(fig, axes, folder / "cfg_vs_clip.png")


def markdown(results: dict) -> str:
  lines = []
  for name, sweep in results["sweeps"].items():
    columns = tuple(c for c in COLUMNS if any(c in row for row in sweep["rows"]))
    rows = [[row["setting"]] + [row.get(c, "") for c in columns]
            for row in sweep["rows"] + [results["real_data"]]]
    lines += [f"\n{name}\n", *markdown_table(("setting",) + columns, rows)]
  if results.get("clip_retrieval"):
    lines += ["\nnoised CLIP retrieval (test split, all its distinct captions)\n",
              *markdown_table(("t", "top-1 caption fits"),
                              [(r["t"], r["top1_caption_fits"])
                               for r in results["clip_retrieval"]])]
  if results.get("schedule"):
    fields = ("color_first", "color_after", "shape_first", "shape_after",
              "position_as_first_alone", "position_as_after_alone")
    lines += [f"\nprompt schedule: {SCHEDULE[0]!r} -> {SCHEDULE[1]!r}\n", *markdown_table(
        ("switch_at", "color of first", "of second", "shape of first", "of second",
         "position as first alone", "as second alone"),
        [[f"{row['switch_at']:g}"] + [row.get(f, "") for f in fields]
         for row in results["schedule"]["rows"]])]
  return "\n".join(lines)


def main(argv=None) -> None:
  args = parse_args(argv)
  folder = pathlib.Path(args.figures)
  folder.mkdir(parents=True, exist_ok=True)
  out = pathlib.Path(args.out)
  if args.replot or args.schedule_only:
    results = json.loads(out.read_text())
    if args.schedule_only:
      model = loading.load(args.text2im, kind="diffusion")
      results["schedule"] = run_schedule(model, evaluation.load_evaluator(
          args.evaluator or ("scenes16" if "scenes" in model.config.data.name else "shapes16")),
          args, folder)
      out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, folder)
    print(markdown(results))  # noqa: T201
    return
  start = time.perf_counter()
  bundle = loading.load(args.text2im, kind="diffusion")
  clip = loading.load(args.clip, kind="clip") if args.clip else None
  scene_model = "scenes" in bundle.config.data.name
  evaluator_name = args.evaluator or ("scenes16" if scene_model else "shapes16")
  evaluator = evaluation.load_evaluator(evaluator_name)
  images, captions, examples = test_split(bundle.config, args.data_dir)
  prompts = first_distinct(captions, args.prompts)
  results = {"environment": environment(), "model": str(bundle), "clip": str(clip),
             "clip_retrieval": clip_rows(clip, images, captions, examples) if clip else [],
             "evaluator": evaluator_name, "method": args.method, "steps": args.steps,
             "per_prompt": args.per_prompt, "seed": 0, "prompts": prompts,
             "real_data": real_data_row(evaluator, images, captions), "sweeps": {}}
  values_of = lambda text: [float(v) for v in text.split(",") if v.strip()]  # noqa: E731
  sweeps = (("cfg", "guidance_scale", values_of(args.cfg_scales)),
            ("clip", "clip_scale", values_of(args.clip_scales) if clip else []))
  for name, knob, values in sweeps:
    if not values:
      continue
    rows, grids = run_sweep(name, knob, values, bundle, clip, prompts, args, evaluator)
    titles = [f"{'cfg' if name == 'cfg' else 'clip'} = {v:g}" for v in values]
    results["sweeps"][name] = {"knob": knob, "rows": rows, "grid": write_grid(
        folder / f"{name}_sweep.png", grids, titles), "grid_prompts": prompts[:GRID_PROMPTS]}
  if args.schedule_num:
    results["schedule"] = run_schedule(bundle, evaluator, args, folder)
  results["plot"] = plot(results, folder)
  results["seconds"] = round(time.perf_counter() - start, 1)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=2) + "\n")
  print(markdown(results))  # noqa: T201


if __name__ == "__main__":
  main()
