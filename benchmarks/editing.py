"""Editing on `shapes` scenes, measured: inpainting, object removal,
re-noise edits, prompt swaps, scene building and upsampling, judged by the
shipped scene evaluator (`scenes16`: every cell empty or which object).

Each measurement takes the first test scenes of "shapes/scenes_16" that
hold an object and asks for a whole scene in a caption that places every
object ("places" phrasing, `scenes.describe`); a sample is right when the
evaluator sees exactly that scene (`metrics.captions_hold`: the edited
object, every kept one, and nothing else).

- inpaint: one object's cell is erased and refilled with another shape and
  color. The inpainting model (GLIDE's paste into x_0) against the
  text-to-image model with x_t replacement, and with RePaint's resampling
  (10, 10). Seam error: the mean absolute difference across the mask
  border, against the same statistic on the real scenes at the same borders.
- remove: one object's cell erased under the caption of the objects kept
  (and under the empty prompt): how often the cell is left empty, and the
  whole scene right.
- edit: re-noise edits (SDEdit) recoloring one object at several
  strengths: how often the scene is the asked one, its color changed, and
  which cells hold objects kept.
- swap: DDIM (eta 0) from one noise under six one-object prompts: how often
  the object stays in the cell it takes under the first, against
  independent noise.
- scene: a scene built in three stages (an object, then two more, each
  inpainted into its cell under the caption of the scene so far).
- upsample: the upsampler on the test split's 16x16 renders
  ("shapes/scenes_16_to_32"), PSNR and SSIM against the true 32x32 renders,
  beside bilinear and bicubic; and on the text-to-image model's samples (a
  cascade), its output downsampled against its input.

Writes JSON (--out) and figures (--figures), prints markdown tables.

    python benchmarks/editing.py --out=benchmarks/results/editing_cpu.json
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from common import environment, markdown_table  # noqa: E402
from diffusion_jax import evaluation, masks, visualize  # noqa: E402
from diffusion_jax.data import pipeline, scenes, shapes  # noqa: E402
from diffusion_jax.evaluation import metrics  # noqa: E402
from diffusion_jax.inference import editing, loading  # noqa: E402

STRENGTHS = (0.3, 0.5, 0.7, 0.9)
SWAP_PROMPTS = ("a red circle", "a blue square", "a green triangle", "a yellow square",
                "a magenta circle", "a cyan triangle")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--inpaint", default="runs/inpaint", help="the inpainting workdir")
  parser.add_argument("--text2im", default="runs/text2im", help="the text-to-image workdir")
  parser.add_argument("--upsample", default="runs/upsample", help="the upsampler workdir")
  parser.add_argument("--out", default="benchmarks/results/editing_cpu.json")
  parser.add_argument("--figures", default="docs/editing")
  parser.add_argument("--num", type=int, default=48, help="test scenes per measurement")
  parser.add_argument("--parts", default="inpaint,remove,edit,swap,upsample,scene,figures",
                      help="what to measure (and draw, with 'figures'); results of "
                           "earlier runs in --out are kept for the other parts")
  parser.add_argument("--steps", default="100", help="steps of the 16x16 models (DDPM)")
  parser.add_argument("--scene_num", type=int, default=100, help="scenes built in three stages")
  parser.add_argument("--scene_settings", default="",
                      help="names of SCENE_SETTINGS to build, separated by | (default: all)")
  parser.add_argument("--data_dir", default=None)
  return parser.parse_args(argv)


def test_examples(dataset: str, num: int, data_dir=None) -> list[dict]:
  """The first `num` examples of `dataset`'s test split."""
  config = ml_collections.ConfigDict({"name": dataset, "data_dir": data_dir or "",
                                      "image_size": 0, "channels": 0})
  source, _ = pipeline.load_source(config, "test")
  return [source[i] for i in range(num)]


def as_float(images) -> np.ndarray:
  return np.asarray(images, np.float32) / 127.5 - 1.0


SCENES = "shapes/scenes_16"
CELL_KEYS = ("cell_shape", "cell_color", "cell_size")


def scene_examples(args, num: int) -> list[dict]:
  """The first `num` test scenes that hold an object."""
  examples = test_examples(SCENES, 4 * num, args.data_dir)
  return [e for e in examples if int(e["num_objects"]) > 0][:num]


def cells_of(example) -> dict:
  return {k: np.array(example[k]) for k in CELL_KEYS}


def changed(cells: dict, cell: int, shape: int = -1, color: int = -1, size: int = -1) -> dict:
  """A copy of `cells` with `cell` set (all -1: emptied)."""
  out = {k: v.copy() for k, v in cells.items()}
  for key, value in zip(CELL_KEYS, (shape, color, size)):
    out[key][cell] = value
  return out


def occupied_cell(rng, cells) -> int:
  return int(rng.choice(np.flatnonzero(cells["cell_shape"] >= 0)))


def other_object(rng, shape: int, color: int) -> tuple[int, int]:
  """A (shape, color) other than the given one."""
  while True:
    new = int(rng.integers(len(shapes.SHAPES))), int(rng.integers(len(shapes.COLORS)))
    if new != (shape, color):
      return new


def seam_error(images, hole) -> float:
  """Mean |x_p - x_q| over 4-neighbour pairs with p in the hole, q outside:
  images [N, S, S, C], hole [N, S, S] bool."""
  total, count = 0.0, 0
  for axis in (1, 2):
    a, b = np.swapaxes(images, 1, axis), np.swapaxes(hole, 1, axis)
    cross = b[:, 1:] != b[:, :-1]  # [N, S-1, S]
    diff = np.abs(a[:, 1:] - a[:, :-1]).mean(-1)
    total += float(diff[cross].sum())
    count += int(cross.sum())
  return total / max(count, 1)


def rate(values) -> float:
  return round(float(np.mean(values)), 4)


def refill_tasks(args, seed: int):
  """(images uint8 [N, 16, 16, 3], erased cell [N], the scenes asked for,
  their captions) of `--num` scenes, one object each changed to another."""
  rng = np.random.default_rng(seed)
  examples = scene_examples(args, args.num)
  cells, asked, prompts = [], [], []
  for example in examples:
    scene = cells_of(example)
    cell = occupied_cell(rng, scene)
    shape, color = other_object(rng, int(scene["cell_shape"][cell]),
                                int(scene["cell_color"][cell]))
    want = changed(scene, cell, shape, color, int(scene["cell_size"][cell]))
    cells.append(cell)
    asked.append(want)
    prompts.append(scenes.describe(want, rng, "places"))
  return np.stack([e["image"] for e in examples]), np.array(cells), asked, prompts


def inpaint_part(args, evaluator, bundles, results, figures):
  images, cells, asked, prompts = refill_tasks(args, seed=0)
  mask = np.stack([masks.cell(16, int(c)) for c in cells])  # [N, 16, 16, 1]
  hole = mask[..., 0] == 0
  real_seam = seam_error(as_float(images), hole)
  rows, shown = [], {"original": as_float(images), "masked": as_float(images) * mask}
  settings = [("inpainting model (paste into x_0), CFG 5", "inpaint", {}),
              ("text-to-image, x_t replacement, CFG 3", "text2im", {}),
              ("text-to-image, RePaint (jump 10, resample 10), CFG 3", "text2im",
               {"resample": 10, "jump": 10})]
  short = ["inpainting model", "text2im, x_t replaced", "text2im, RePaint"]
  for name, model, extra in settings:
    start = time.perf_counter()
    out = bundles[model].inpaint(images, mask, prompts=prompts, seed=0, method="ddpm",
                                 steps=args.steps, **extra)
    seconds = time.perf_counter() - start
    seen = metrics.predicted_cells(evaluator, out)
    at = np.arange(len(out)), cells
    new_ok = ((seen["cell_shape"][at] == [a["cell_shape"][c] for a, c in zip(asked, cells)])
              & (seen["cell_color"][at] == [a["cell_color"][c] for a, c in zip(asked, cells)]))
    row = {"setting": name, "num": len(out), "seconds": round(seconds, 1),
           "scene_right": rate(metrics.captions_hold(evaluator, out, prompts)),
           "new_object_right": rate(new_ok),
           "seam_error": round(seam_error(out, hole), 4),
           "seam_error_real": round(real_seam, 4)}
    print(json.dumps({"part": "inpaint", **row}), flush=True)  # noqa: T201
    rows.append(row)
    shown[short[len(rows) - 1]] = out
  results["inpaint"] = {"prompts": prompts[:8], "rows": rows}
  figures["inpaint"] = (shown, prompts)


def remove_part(args, evaluator, bundles, results, figures):
  rng = np.random.default_rng(2)
  examples = scene_examples(args, args.num)
  images = np.stack([e["image"] for e in examples])
  cells = np.array([occupied_cell(rng, cells_of(e)) for e in examples])
  kept = [changed(cells_of(e), int(c)) for e, c in zip(examples, cells)]
  prompts = [scenes.describe(k, rng, "places") for k in kept]
  mask = np.stack([masks.cell(16, int(c)) for c in cells])
  hole = mask[..., 0] == 0

  def measured(name, x):
    seen = metrics.predicted_cells(evaluator, x)
    return {"setting": name,
            "cell_empty": rate(seen["cell_shape"][np.arange(len(x)), cells] < 0),
            "scene_right": rate(metrics.captions_hold(evaluator, x, prompts))}
  rows = [measured("before (the real scenes)", images)]
  shown = {"original": as_float(images)}
  for name, model, prompt in (
      ("inpainting model, the kept objects' caption, CFG 5", "inpaint", prompts),
      (f"editing.remove: inpainting model, \"{editing.REMOVAL_PROMPT}\", CFG 5", "inpaint",
       editing.REMOVAL_PROMPT),
      ("inpainting model, empty prompt, CFG 5", "inpaint", ""),
      ("text-to-image, x_t replacement, the kept objects' caption", "text2im", prompts)):
    if isinstance(prompt, str):
      out = editing.remove(bundles[model], images, mask, seed=0, prompt=prompt, method="ddpm",
                           steps=args.steps)
    else:
      out = bundles[model].inpaint(images, mask, prompts=prompt, seed=0, method="ddpm",
                                   steps=args.steps)
    rows.append({**measured(name, out), "seam_error": round(seam_error(out, hole), 4)})
    print(json.dumps({"part": "remove", **rows[-1]}), flush=True)  # noqa: T201
    shown[name] = out
  results["remove"] = {"prompts": prompts[:8], "rows": rows}
  figures["remove"] = shown


def edit_part(args, evaluator, bundles, results, figures):
  rng = np.random.default_rng(1)
  examples = scene_examples(args, args.num)
  images = np.stack([e["image"] for e in examples])
  cells, asked, prompts = [], [], []
  for example in examples:
    scene = cells_of(example)
    cell = occupied_cell(rng, scene)
    color = int((scene["cell_color"][cell] + 1 + rng.integers(len(shapes.COLORS) - 1))
                % len(shapes.COLORS))
    want = changed(scene, cell, int(scene["cell_shape"][cell]), color,
                   int(scene["cell_size"][cell]))
    cells.append(cell)
    asked.append(want)
    prompts.append(scenes.describe(want, rng, "places"))
  at = np.arange(len(examples)), np.array(cells)
  occupied = np.stack([a["cell_shape"] >= 0 for a in asked])  # [N, 9]
  rows, shown = [], {"original": as_float(images)}
  for strength in STRENGTHS:
    out = bundles["text2im"].edit(images, strength, prompts=prompts, seed=0, method="ddpm",
                                  steps=args.steps)
    seen = metrics.predicted_cells(evaluator, out)
    rows.append({"strength": strength,
                 "scene_right": rate(metrics.captions_hold(evaluator, out, prompts)),
                 "color_changed": rate(seen["cell_color"][at]
                                       == [a["cell_color"][c] for a, c in zip(asked, cells)]),
                 "layout_kept": rate(((seen["cell_shape"] >= 0) == occupied).all(1))})
    print(json.dumps({"part": "edit", **rows[-1]}), flush=True)  # noqa: T201
    shown[f"strength {strength:g}"] = out
  results["edit"] = {"prompts": prompts[:8], "rows": rows}
  figures["edit"] = (shown, prompts)


def swap_part(args, evaluator, bundles, results, figures):
  """At the model's CFG scale (3) and without guidance (1)."""
  num, rows = args.num, []

  def agreement(images):
    """How often a prompt's sample has its one object in the first prompt's
    sample's cell (over pairs where both drew one object)."""
    cells = []
    for row in images:
      occupied = metrics.predicted_cells(evaluator, row)["cell_shape"] >= 0  # [N, 9]
      cells.append(np.where(occupied.sum(1) == 1, occupied.argmax(1), -1))
    cells = np.stack(cells)  # [P, N]
    both = (cells[1:] >= 0) & (cells[:1] >= 0)
    return rate((cells[1:] == cells[:1])[both]), rate(cells >= 0)
  for scale in (3.0, 1.0):
    common = dict(method="ddim", eta=0.0, steps="50", guidance_scale=scale)
    shared = editing.label_swap(bundles["text2im"], list(SWAP_PROMPTS), num=num, seed=0,
                                **common)
    independent = np.stack([bundles["text2im"].sample(prompts=[p] * num, seed=10 + i, **common)
                            for i, p in enumerate(SWAP_PROMPTS)])
    for name, images in ((f"one noise, six prompts (DDIM eta 0), CFG {scale:g}", shared),
                         (f"independent noise per prompt, CFG {scale:g}", independent)):
      same, single = agreement(images)
      rows.append({"setting": name, "same_cell": same, "one_object_drawn": single})
    if scale == 3.0:
      figures["swap"] = shared
  for row in rows:
    print(json.dumps({"part": "swap", **row}), flush=True)  # noqa: T201
  results["swap"] = {"prompts": list(SWAP_PROMPTS), "rows": rows}


def psnr(a, b) -> float:
  mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2, axis=(1, 2, 3))
  return float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))))


def ssim(a, b) -> float:
  """Mean SSIM (Wang et al. 2004: Gaussian window sigma 1.5, 11 taps,
  K1 0.01, K2 0.03) of uint8-range images [N, H, W, C], per channel."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  taps = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
  taps /= taps.sum()

  def blur(x):
    x = np.pad(x, ((0, 0), (5, 5), (5, 5), (0, 0)), mode="reflect")
    x = sum(w * x[:, i:i + x.shape[1] - 10] for i, w in enumerate(taps))
    return sum(w * x[:, :, i:i + x.shape[2] - 10] for i, w in enumerate(taps))
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  mu_a, mu_b = blur(a), blur(b)
  var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
  cov = blur(a * b) - mu_a * mu_b
  value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1)
                                                       * (var_a + var_b + c2))
  return float(value.mean())


def resized(images, size, method) -> np.ndarray:
  return np.stack([np.asarray(Image.fromarray(x).resize((size, size), method)) for x in images])


def upsample_part(args, evaluator, bundles, results, figures):
  examples = test_examples("shapes/scenes_16_to_32", args.num, args.data_dir)
  low = np.stack([e["low_res"] for e in examples])
  high = np.stack([e["image"] for e in examples])
  captions = [e["caption"].decode() if isinstance(e["caption"], bytes) else e["caption"]
              for e in examples]
  up = bundles["upsample"]
  start = time.perf_counter()
  ours = visualize.to_uint8(up.upsample(low, prompts=captions, seed=0))
  seconds = time.perf_counter() - start
  rows = [{"setting": f"upsampler ({up.config.sample.steps}, temperature "
                      f"{up.config.sample.temperature:g})", "psnr": round(psnr(ours, high), 2),
           "ssim": round(ssim(ours, high), 4), "seconds": round(seconds, 1)}]
  for name, method in (("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)):
    base = resized(low, 32, method)
    rows.append({"setting": name, "psnr": round(psnr(base, high), 2),
                 "ssim": round(ssim(base, high), 4)})
  # A cascade: the text-to-image model's samples in, its output box-downsampled
  # back against its input (does it keep what the base model drew?).
  small, large = editing.cascade(bundles["text2im"], up, prompts=captions[:16], seed=0,
                                 method="ddpm", steps=args.steps)
  small_u8, large_u8 = visualize.to_uint8(small), visualize.to_uint8(large)
  back = resized(large_u8, 16, Image.BOX)
  rows.append({"setting": "cascade: upsampled base samples, box-downsampled vs the base "
                          "samples", "psnr": round(psnr(back, small_u8), 2),
               "ssim": round(ssim(back, small_u8), 4)})
  real_back = resized(ours, 16, Image.BOX)
  rows.append({"setting": "same, on the real 16x16 renders", "psnr": round(psnr(real_back, low), 2),
               "ssim": round(ssim(real_back, low), 4)})
  for row in rows:
    print(json.dumps({"part": "upsample", **row}), flush=True)  # noqa: T201
  results["upsample"] = {"rows": rows}
  figures["upsample"] = (low, ours, high, resized(low, 32, Image.BICUBIC), small_u8, large_u8,
                         captions)


# ------------------------------------------------------------------ figures --

def save_grid(rows, path, titles=None):
  visualize.image_grid(np.stack(rows), titles).save(path)
  print(f"wrote {path}")  # noqa: T201


def write_figures(args, bundles, figures):
  out = pathlib.Path(args.figures)
  out.mkdir(parents=True, exist_ok=True)
  cols = 8
  if "inpaint" in figures:
    shown, prompts = figures["inpaint"]
    save_grid([v[:cols] for v in shown.values()], out / "inpaint.png", list(shown))
  if "remove" in figures:
    shown = figures["remove"]
    save_grid([v[:cols] for v in shown.values()], out / "remove.png",
              ["original", "inpainting model, kept objects' caption",
               f"editing.remove (\"{editing.REMOVAL_PROMPT}\")",
               "inpainting model, empty prompt", "text-to-image, x_t replaced"])
  if "edit" in figures:
    shown, _ = figures["edit"]
    save_grid([v[:cols] for v in shown.values()], out / "edit_strengths.png", list(shown))
  if "swap" in figures:
    save_grid([r[:cols] for r in figures["swap"]], out / "label_swap.png", list(SWAP_PROMPTS))
  if "upsample" in figures:
    low, ours, high, bicubic, small, large, _ = figures["upsample"]
    big = lambda x: np.repeat(np.repeat(x, 2, 1), 2, 2)  # noqa: E731
    save_grid([big(low[:cols]), bicubic[:cols], ours[:cols], high[:cols]],
              out / "upsample.png", ["16x16 input", "bicubic", "upsampler", "true 32x32"])
    save_grid([big(small[:cols]), large[:cols]], out / "cascade.png",
              ["base 16x16", "upsampled 32x32"])
  if "scene" in args.parts.split(","):
    story_figures(args, bundles, figures, out)


# Three stages: the caption of the scene so far (what the inpainting model
# learned: captions that name every object, and what each stage is judged
# by), the words of the new object alone, and its cell, erased.
SCENE = [("a red circle on the left", "a red circle on the left", None),
         ("a red circle on the left and a blue square in the top right",
          "a blue square in the top right", masks.cell(16, 2)),
         ("a red circle on the left, a blue square in the top right and a green triangle "
          "at the bottom", "a green triangle at the bottom", masks.cell(16, 7))]
# name: (model, which prompt each stage gets, extra settings)
SCENE_SETTINGS = {
    "inpainting model": ("inpaint", "whole", {}),
    "inpainting model, each stage names its new object only": ("inpaint", "new", {}),
    "text-to-image, RePaint (10, 10)": ("text2im", "whole", {"resample": 10}),
}


def scene_part(args, evaluator, bundles, results, figures):
  """`--scene_num` three-stage scenes (one batch a stage) in each of
  `--scene_settings`: how often each stage's scene is its whole caption's
  (`metrics.captions_hold`). Rows of settings not run are kept."""
  names = args.scene_settings.split("|") if args.scene_settings else list(SCENE_SETTINGS)
  unknown = [n for n in names if n not in SCENE_SETTINGS]
  if unknown:
    raise SystemExit(f"error: unknown scene setting {unknown[0]!r}; choose from "
                     f"{', '.join(SCENE_SETTINGS)}")
  captions = [whole for whole, _, _ in SCENE]
  kept = [r for r in results.get("scene", {}).get("rows", []) if r["setting"] not in names]
  rows, shown = [], {}
  for name in names:
    model, which, extra = SCENE_SETTINGS[name]
    stages = [(whole if which == "whole" else new, mask) for whole, new, mask in SCENE]
    built = editing.build_scene(bundles[model], stages, seed=0, num=args.scene_num,
                                method="ddpm", steps=args.steps, **extra)
    scenes_built = np.stack(built, 1)  # [scenes, stages, S, S, C]
    holds = np.stack([metrics.captions_hold(evaluator, scenes_built[:, k],
                                            [captions[k]] * len(scenes_built))
                      for k in range(len(SCENE))], 1)  # [scenes, stages]
    rows.append({"setting": name, "scenes": args.scene_num,
                 **{f"stage_{k + 1}_right": rate(holds[:, k]) for k in range(len(SCENE))}})
    print(json.dumps({"part": "scene", **rows[-1]}), flush=True)  # noqa: T201
    shown[name] = (list(scenes_built), holds)
  order = list(SCENE_SETTINGS)
  results["scene"] = {"stages": captions,
                      "rows": sorted(kept + rows, key=lambda r: order.index(r["setting"])
                                     if r["setting"] in order else len(order))}
  figures["scene"] = shown


def story_figures(args, bundles, figures, out):
  """The scenes (two scenes of each model, those right at the last stage
  first), and an outpainted panorama."""
  if "scene" in figures:
    rows, titles = [], []
    for name, (stages, holds) in figures["scene"].items():
      order = sorted(range(len(stages)), key=lambda i: -int(holds[i, -1]))[:2]
      rows += [stages[i] for i in order]
      titles += [f"{name}, scene {i}" for i in order]
    save_grid(rows, out / "scene.png", titles)
  bundle = bundles["inpaint"]
  start = bundle.sample(num=1, seed=5, prompts=["a red circle on the left"], method="ddpm",
                        steps=args.steps)[0]  # the inpainting model draws from nothing too
  wide = editing.panorama(bundle, start, 64, pixels=8, seed=7, prompts=["a yellow circle"],
                          method="ddpm", steps=args.steps)
  save_grid([wide[None]], out / "panorama.png", ["16 -> 64 wide"])


def print_tables(results):
  if "inpaint" in results:
    print("\n".join(markdown_table(  # noqa: T201
        ["setting", "scene right", "new object right", "seam error (real)", "s"],
        [[r["setting"], r["scene_right"], r["new_object_right"],
          f'{r["seam_error"]} ({r["seam_error_real"]})', r["seconds"]]
         for r in results["inpaint"]["rows"]])))
  for part, keys in (("remove", ("setting", "cell_empty", "scene_right", "seam_error")),
                     ("edit", ("strength", "scene_right", "color_changed", "layout_kept")),
                     ("swap", ("setting", "same_cell", "one_object_drawn")),
                     ("scene", ("setting", "stage_1_right", "stage_2_right", "stage_3_right")),
                     ("upsample", ("setting", "psnr", "ssim", "seconds"))):
    if part in results:
      print("\n".join(markdown_table(keys, [[r.get(k, "") for k in keys]  # noqa: T201
                                            for r in results[part]["rows"]])))


class Models(dict):
  """The workdirs of --inpaint, --text2im and --upsample, loaded when first used."""

  def __init__(self, args):
    super().__init__()
    self.args = args

  def __missing__(self, name):
    self[name] = loading.load(getattr(self.args, name))
    return self[name]

  def described(self) -> dict:
    return {name: f"{getattr(self.args, name)}: {bundle!r}" for name, bundle in self.items()}


def main(argv=None):
  args = parse_args(argv)
  parts = args.parts.split(",")
  evaluator = evaluation.load_evaluator("scenes16")
  bundles = Models(args)
  out = pathlib.Path(args.out)
  results = json.loads(out.read_text()) if out.exists() else {}
  results.update({"environment": environment(), "args": vars(args)})
  figures = {}
  start = time.perf_counter()
  for part, fn in (("inpaint", inpaint_part), ("remove", remove_part), ("edit", edit_part),
                   ("swap", swap_part), ("upsample", upsample_part), ("scene", scene_part)):
    if part in parts:
      fn(args, evaluator, bundles, results, figures)
  if "figures" in parts:
    write_figures(args, bundles, figures)
  results.setdefault("seconds", {})[args.parts] = round(time.perf_counter() - start, 1)
  results.setdefault("models", {}).update(bundles.described())
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1))
  print_tables(results)


if __name__ == "__main__":
  main()
