"""`--mode=sample` with images in: inpainting, re-noise edits, outpainting,
upsampling and cascades, each written as a PNG grid and its `.npz`.

  sample.init_image=PNG          the image to edit (with a mask: inpaint it;
                                 without: re-noise it to sample.strength)
  sample.mask=PNG                white (>= 128) keeps, black fills
  sample.strength=S              (0, 1]: re-noise edits (SDEdit)
  sample.outpaint=SIDE:PIXELS[xTIMES]  grow init_image ("right:8x3")
  sample.base_samples=NPZ|PNG|DIR      an upsampler's inputs: a samples
                                 `.npz` (arr_0, or a grid's images), PNG
                                 files, or a folder of them
  sample.upsampler=PATH          a base model's samples upsampled by this
                                 upsampler (a cascade)
  sample.scene="P1|P2@C|P3@M.png"  a scene built stage by stage: P1 drawn
                                 (or sample.init_image), then each prompt
                                 inpainted into grid cell C (0 top left ..
                                 8 bottom right) or the black of mask M

Grids: one row per prompt (or label) of `sample.prompts` (`sample.labels`),
`sample.per_class` samples each; upsampling shows each low-res input beside
its upsampled image.
"""
from __future__ import annotations

import pathlib
from typing import Optional

import numpy as np
from absl import logging
from PIL import Image

from diffusion_jax import masks
from diffusion_jax.inference import editing, loading, outputs

EDIT_FIELDS = ("init_image", "mask", "outpaint", "base_samples", "upsampler", "scene")


def requested(sample_config) -> bool:
  """Whether the `sample` section asks for an edit (an image in, or a cascade)."""
  return any(sample_config.get(name, "") for name in EDIT_FIELDS)


def read_png(path, channels: int) -> np.ndarray:
  """uint8 [H, W, C] of a PNG file, in RGB (or gray for one channel)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no image file {path}")
  with Image.open(path) as image:
    return np.asarray(image.convert("L" if channels == 1 else "RGB")).reshape(
        image.size[1], image.size[0], -1)


def read_mask(path) -> np.ndarray:
  """float32 [H, W, 1] of a mask PNG: 1 where white (>= 128, kept), 0 where black."""
  with Image.open(pathlib.Path(path)) as image:
    return (np.asarray(image.convert("L")) >= 128).astype(np.float32)[..., None]


def read_base_samples(source: str, channels: int) -> tuple[np.ndarray, Optional[list]]:
  """(uint8 images [N, s, s, C], prompts or None) from a samples `.npz`
  (guided-diffusion's arr_0, or a grid's `images` [R, C, ...] and its rows'
  `prompts`), a PNG file, or a folder of PNGs (sorted by name)."""
  path = pathlib.Path(source)
  if path.suffix == ".npz":
    with np.load(path, allow_pickle=False) as data:
      if "arr_0" in data:
        return data["arr_0"], None
      if "images" in data:
        images = data["images"]
        rows, cols = images.shape[:2]
        prompts = ([str(p) for p in data["prompts"] for _ in range(cols)]
                   if "prompts" in data else None)
        return images.reshape((rows * cols,) + images.shape[2:]), prompts
      raise ValueError(f"{path} holds neither arr_0 (a samples .npz) nor images (a grid)")
  files = sorted(path.glob("*.png")) if path.is_dir() else [path]
  if not files:
    raise ValueError(f"no PNG files in {path}")
  return np.stack([read_png(f, channels) for f in files]), None


def _prompts_for(sample_config, num: int, given=None) -> dict:
  prompts = outputs.split_prompts(sample_config.get("prompts", ""))
  if prompts is None and given is not None:
    return {"prompts": list(given)}
  return {} if prompts is None else {"prompts": outputs.many_prompts(prompts, num)}


def _rows(bundle, sample_config):
  """The grid's rows: (titles, per-row conditioning kwargs)."""
  labels, prompts = outputs.grid_layout(bundle.spec, sample_config)
  if prompts is not None:
    return prompts, [{"prompts": [p] * sample_config.per_class} for p in prompts]
  if bundle.spec.num_classes:
    titles = [f"label {int(row[0])}" for row in labels]
    return titles, [{"labels": list(row)} for row in labels]
  return [""], [{}]


def run(config, workdir: str, model: Optional[str] = None) -> pathlib.Path:
  """Writes the edit `config.sample` asks for with `model` (default: the
  one in `workdir`) under `workdir`; returns the PNG written."""
  sample = config.sample
  bundle = loading.load(model or workdir, loading.ema_choice(sample), kind="diffusion")
  settings = {k: sample[k] for k in ("method", "steps", "eta", "guidance_scale",
                                     "temperature", "resample", "jump")}
  out = pathlib.Path(sample.output or pathlib.Path(workdir) / "samples" / "edited")
  if sample.get("base_samples", ""):
    return _upsample(bundle, sample, settings, out)
  if sample.get("upsampler", ""):
    return _cascade(bundle, sample, settings, out)
  if sample.get("scene", ""):
    return _scene(bundle, sample, settings, out)
  if not sample.get("init_image", ""):
    raise ValueError("sample.mask, sample.strength and sample.outpaint edit "
                     "sample.init_image: give it (a PNG)")
  image = read_png(sample.init_image, bundle.info.channels)
  if sample.get("outpaint", ""):
    return _outpaint(bundle, sample, settings, image, out)
  mask = read_mask(sample.mask) if sample.get("mask", "") else None
  titles, rows = _rows(bundle, sample)
  images = []
  for index, cond in enumerate(rows):
    kwargs = dict(settings, num=sample.per_class, seed=sample.seed + index, **cond)
    if mask is not None and sample.strength >= 1.0:
      images.append(bundle.inpaint(image, mask, **kwargs))
    else:
      images.append(bundle.edit(image, sample.strength, mask, **kwargs))
  logging.info("edited %s (strength %g, mask %s)", sample.init_image, sample.strength,
               sample.get("mask", "") or "none")
  return outputs.write_grid(np.stack(images), np.zeros((len(rows), sample.per_class)),
                            out, titles)


def parse_scene(text: str, size: int) -> list[tuple]:
  """"a red circle|a blue square@2|a green triangle@mask.png" -> (prompt,
  mask or None) stages; only the first may have no mask."""
  stages = []
  for index, part in enumerate(p.strip() for p in str(text).split("|") if p.strip()):
    prompt, _, where = part.partition("@")
    if not where:
      mask = None
    elif where.strip().isdigit():
      mask = masks.cell(size, int(where))
    else:
      mask = read_mask(where.strip())
    if mask is None and index:
      raise ValueError(f"sample.scene stage {index + 1} ({part!r}) says no region: write "
                       "PROMPT@CELL (0-8) or PROMPT@MASK.png")
    stages.append((prompt.strip(), mask))
  if not stages:
    raise ValueError("sample.scene is empty")
  return stages


def _scene(bundle, sample, settings, out):
  stages = parse_scene(sample.scene, bundle.info.image_size)
  image = (read_png(sample.init_image, bundle.info.channels)
           if sample.get("init_image", "") else None)
  rows = [np.stack(editing.build_scene(bundle, stages, image, seed=sample.seed + row,
                                       **settings))
          for row in range(sample.per_class)]
  return outputs.write_grid(np.stack(rows), np.zeros((len(rows), len(stages))), out,
                            [f"seed {sample.seed + row}" for row in range(len(rows))])


def parse_outpaint(text: str) -> tuple[str, int, int]:
  """"right:8x3" -> ("right", 8, 3); "left:4" -> ("left", 4, 1)."""
  side, _, amount = str(text).partition(":")
  pixels, _, times = amount.partition("x")
  if not pixels.isdigit() or (times and not times.isdigit()):
    raise ValueError(f"sample.outpaint {text!r}: write SIDE:PIXELS or SIDE:PIXELSxTIMES, "
                     "e.g. right:8x3")
  return side.strip(), int(pixels), int(times or 1)


def _outpaint(bundle, sample, settings, image, out):
  side, pixels, times = parse_outpaint(sample.outpaint)
  prompts = _prompts_for(sample, 1)
  canvas = bundle.outpaint(image, side, pixels, times, seed=sample.seed, **settings, **prompts)
  return outputs.write_grid(canvas[None, None], np.zeros((1, 1)), out,
                            prompts.get("prompts"))


def _pairs_grid(low, high, prompts, out):
  """Each low-res image (enlarged, nearest) beside its upsampled image."""
  factor = high.shape[1] // low.shape[1]
  big = np.repeat(np.repeat(low.astype(np.float32) / 127.5 - 1 if low.dtype == np.uint8
                            else low, factor, 1), factor, 2)
  grid = np.stack([big, high], axis=1)  # [N, 2, S, S, C]
  titles = None if prompts is None else list(prompts["prompts"])
  return outputs.write_grid(grid, np.zeros((len(high), 2)), out, titles)


def _upsample(bundle, sample, settings, out):
  low, given = read_base_samples(sample.base_samples, bundle.info.channels)
  prompts = _prompts_for(sample, len(low), given)
  high = bundle.upsample(low, seed=sample.seed, **settings, **prompts)
  logging.info("upsampled %d images of %s", len(low), sample.base_samples)
  return _pairs_grid(low, high, prompts, out)


def _cascade(bundle, sample, settings, out):
  upsampler = loading.load(sample.upsampler, kind="diffusion")
  titles, rows = _rows(bundle, sample)
  lows, highs, prompts = [], [], []
  for index, cond in enumerate(rows):
    small, large = editing.cascade(bundle, upsampler, seed=sample.seed + index,
                                   num=sample.per_class, **settings, **cond)
    lows.append(small)
    highs.append(large)
    prompts += cond.get("prompts", [titles[index]] * len(small))
  return _pairs_grid(np.concatenate(lows), np.concatenate(highs), {"prompts": prompts}, out)
