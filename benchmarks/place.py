"""Does the text model learn where a caption puts the object? docs/text2im.md.

The shipped text-to-image model (configs/shapes_text2im.py) obeys shape,
color and size but places objects at chance (1 in 9) at every CFG scale,
after 3,000 and 6,000 steps alike. The hypothesis: it has no absolute
position signal. Its attention has no position embedding, its text enters
as a spatially uniform shift (the pooled token) and as keys and values that
every pixel queries alike, so only the convolutions' zero padding at the
borders tells a pixel where it is. The test: the same config with one
factor changed, `model.coordinates` (two input channels holding each
pixel's row and column, CoordConv), trained as long, judged the same way.

Each variant trains for `--steps` (a checkpoint kept every `--eval_every`),
then samples the first `--prompts` distinct test captions that name a
place, `--per_prompt` times each, with CFG `--scale` and the model's own
sampler, and the shipped evaluator judges every sample: place, shape and
color accuracy and whole-caption accuracy (`metrics.judge_captions`).

Resumable: training resumes from each run's workdir and every measured
point is kept in `--out`.

    python benchmarks/place.py --variants=coordinates,glide \\
        --out=benchmarks/results/place_cpu.json
"""
from __future__ import annotations

import argparse
import importlib
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(1, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/

import numpy as np  # noqa: E402
from text_guidance import judged, test_split  # noqa: E402

from common import environment, markdown_table, resumable_results, train_timed  # noqa: E402
from diffusion_jax import visualize  # noqa: E402
from diffusion_jax.data import shapes  # noqa: E402
from diffusion_jax.evaluation import evaluator as evaluator_lib  # noqa: E402
from diffusion_jax.inference import loading  # noqa: E402

VARIANTS = {"glide": {}, "coordinates": {"model.coordinates": True},
            "v": {"diffusion.parameterization": "v"},
            "v_coordinates": {"diffusion.parameterization": "v", "model.coordinates": True}}
# The text model's sensitivity probe: a caption, and the same caption with
# one thing changed (or dropped), by what changed.
PROBE = {"place (top left -> bottom right)": "a red square in the bottom right",
         "place (top left -> on the left)": "a red square on the left",
         "place dropped": "a red square",
         "color (red -> blue)": "a blue square in the top left",
         "shape (square -> circle)": "a red circle in the top left",
         "empty prompt": ""}
PROBED = "a red square in the top left"
SHOWN = ("caption_accuracy", "accuracy_position", "accuracy_shape", "accuracy_color")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--eval_every", type=int, default=750)
  parser.add_argument("--prompts", type=int, default=48, help="distinct test captions")
  parser.add_argument("--per_prompt", type=int, default=4)
  parser.add_argument("--scale", type=float, default=3.0, help="the CFG scale")
  parser.add_argument("--root", default="runs/place")
  parser.add_argument("--out", default="benchmarks/results/place_cpu.json")
  parser.add_argument("--figures", default="docs/text2im")
  parser.add_argument("--report_only", action="store_true")
  parser.add_argument("--probe", default="",
                      help="comma-separated models (names or workdirs): print how far "
                      "the text model's output moves when a caption's place, color or "
                      "shape changes, then stop")
  return parser.parse_args(argv)


def variant_config(name: str, seed: int, args):
  config = importlib.import_module("configs.shapes_text2im").get_config("one_object")
  for key, value in VARIANTS[name].items():
    section, field = key.split(".")
    config[section][field] = value
  config.seed = seed
  config.train.num_steps = args.steps
  config.train.checkpoint_every = args.eval_every
  config.train.keep_every = args.eval_every
  config.train.sample_every = 0
  return config


def train(name: str, seed: int, args) -> dict:
  """Trains (or resumes) one run; its workdir and the time per step."""
  return train_timed(variant_config(name, seed, args),
                     pathlib.Path(args.root) / f"{name}_seed{seed}")


def placed_prompts(args) -> list[str]:
  """The first `--prompts` distinct test captions that name a place."""
  _, captions, _ = test_split(variant_config("glide", 0, args), None)
  chosen = []
  for caption in captions:
    if "position" in shapes.parse_caption(caption) and caption not in chosen:
      chosen.append(caption)
    if len(chosen) == args.prompts:
      break
  return chosen


def measure(workdir: str, step: int, prompts, evaluator, args) -> tuple[dict, np.ndarray]:
  bundle = loading.load(workdir, step=step)
  ids = np.repeat(np.arange(len(prompts)), args.per_prompt)
  tick = time.perf_counter()
  images = bundle.sample(prompts=[prompts[i] for i in ids], seed=0,
                         guidance_scale=args.scale)
  row = {"step": step, "num": len(ids), "seconds": round(time.perf_counter() - tick, 1),
         **judged(evaluator, images, prompts, ids)}
  return row, images


def main(argv=None):
  args = parse_args(argv)
  if args.probe:
    print("\n".join(probe(args.probe.split(","))))  # noqa: T201
    return
  results, save = resumable_results(args.out, {"runs": {}})
  if not args.report_only:
    results.update(environment=environment(), args=vars(args))
    prompts = placed_prompts(args)
    evaluator = evaluator_lib.load_evaluator("shapes16")
    from diffusion_jax import checkpoint as ckpt_lib
    for name in args.variants.split(","):
      for seed in map(int, args.seeds.split(",")):
        run = results["runs"].setdefault(f"{name}/seed{seed}", {
            "variant": name, "seed": seed, "overrides": VARIANTS[name], "evals": []})
        run.update(train(name, seed, args))
        save()
        checkpointer = ckpt_lib.Checkpointer(str(pathlib.Path(run["workdir"]) / "checkpoints"),
                                             read_only=True)
        kept = checkpointer.complete_steps()
        checkpointer.close()
        done = {r["step"] for r in run["evals"]}
        for step in (s for s in kept if s not in done):
          row, images = measure(run["workdir"], step, prompts, evaluator, args)
          run["evals"].append(row)
          save()
          if step == max(kept):
            grid(images, prompts, args, f"place_{name}_seed{seed}.png")
  report(results)


def text_shift(bundle, probed: str, changes: dict) -> dict:
  """{change: (pooled, sequence)}: how far the text model's pooled output
  (xf_proj, added to the timestep embedding) and its token sequence (xf_out,
  the attention's keys and values) move, |a - b| / |a|, when `probed` is
  replaced by each of `changes`' captions."""
  from diffusion_jax.text import tokenizer as tok_lib
  unet = bundle.spec.model
  tokens, mask = tok_lib.pad_and_mask([probed, *changes.values()], unet.text.text_ctx)
  encoded = [np.asarray(a) for a in unet.encode_text(bundle.params, tokens, mask)]
  return {change: tuple(round(float(np.linalg.norm(a[i] - a[0]) / np.linalg.norm(a[0])), 3)
                        for a in encoded)
          for i, change in enumerate(changes, start=1)}


def probe(models) -> list[str]:
  """A markdown table: for each change of `PROBED`, `text_shift` of each model."""
  rows = {change: [change] for change in PROBE}
  for model in models:
    for change, moved in text_shift(loading.load(model), PROBED, PROBE).items():
      rows[change].append(f"{moved[0]:.3f} / {moved[1]:.3f}")
  return markdown_table(["change of " + repr(PROBED), *(f"{m}: pooled / sequence"
                                                        for m in models)], list(rows.values()))


def grid(images, prompts, args, filename: str, count: int = 8) -> None:
  """The first `count` prompts, one row each: its samples."""
  rows = images[:count * args.per_prompt]
  folder = pathlib.Path(args.figures)
  folder.mkdir(parents=True, exist_ok=True)
  visualize.rows(rows, prompts[:count]).save(folder / filename)
  print(folder / filename)  # noqa: T201


def report(results) -> None:
  rows = []
  for key, run in results["runs"].items():
    for r in sorted(run["evals"], key=lambda r: r["step"]):
      rows.append([key, r["step"], run.get("seconds_per_step", "")]
                  + [f"{r[m]:.3f}" for m in SHOWN])
  print("\n".join(markdown_table(["run", "step", "s/step", *SHOWN], rows)))  # noqa: T201


if __name__ == "__main__":
  main()
