"""Editing with a trained model: inpainting, object removal, scene building,
outpainting, re-noise edits (SDEdit), label swaps, upsampling and cascades.

Each is one call on a `Bundle` (`bundle.inpaint(image, mask, prompts=...)`)
and runs the model's compiled sampler with the edit's images, masks and
strength as traced arguments (`sampler.EditInputs`): a new mask does not
recompile. Images are uint8 [0, 255] or float [-1, 1], [H, W, C] (one for
the batch) or [B, H, W, C]; masks are 1 (or True, or 255) where a pixel is
kept and 0 where it is filled, [H, W], [H, W, 1] or [B, H, W, 1].

How the known pixels are kept depends on the model: GLIDE's inpainting model
(`model.inpaint`) takes them as inputs and has them pasted into every
predicted x_0; any other model has the known region of each x_{t-1}
replaced by the known image noised to that step's level (with RePaint's
resampling when `resample > 1`). Either way the result holds them exactly.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from diffusion_jax import masks as masks_lib
from diffusion_jax import validation
from diffusion_jax.inference.sampler import EditInputs


def check_mask(mask, batch: int, height: int, width: int) -> np.ndarray:
  """A user's mask as float32 [B, H, W, 1] of 0 (fill) and 1 (keep).

  Raises:
    ValueError: a wrong shape, values other than 0 and 1 (or 0 and 255 in
      uint8), or a mask that keeps every pixel (nothing to fill).
  """
  array = np.asarray(mask)
  if array.dtype == np.uint8 and array.max(initial=0) > 1:
    if not np.all(np.isin(array, (0, 255))):
      raise ValueError("a uint8 mask must be 0 (fill) or 255 (keep); got values "
                       f"{np.unique(array)[:5].tolist()}")
    array = array // 255
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim == 3:
    array = array[None]
  if array.ndim == 4 and array.shape[0] == 1 and batch > 1:
    array = np.repeat(array, batch, axis=0)
  mask = validation.check_mask(array.astype(np.float32), (batch, height, width))
  if np.all(mask == 1):
    raise ValueError("the mask keeps every pixel: nothing to fill (0 marks the pixels to fill)")
  return mask


def _num(num: Optional[int], kwargs) -> Optional[int]:
  """The batch: `num`, else the number of labels or prompts given, else None."""
  if num is not None:
    return num
  sizes = {len(v) for k, v in kwargs.items() if k in ("labels", "prompts") and np.ndim(v) >= 1}
  return sizes.pop() if len(sizes) == 1 else None


def _images(bundle, image, num: Optional[int], name: str = "image") -> np.ndarray:
  info = bundle.info
  images = validation.check_images(image, image_size=info.image_size, channels=info.channels,
                                   name=name)
  if num is not None and images.shape[0] not in (1, num):
    raise ValueError(f"{images.shape[0]} {name}s for {num} samples: give one, or one per sample")
  return np.repeat(images, num, axis=0) if num and images.shape[0] == 1 else images


def _model_inputs(bundle, images, mask, kwargs) -> dict:
  """The kwargs with an inpainting model's own image and mask inputs."""
  if bundle.spec.inpaints:
    return dict(kwargs, image=images, mask=mask)
  return kwargs


def inpaint(bundle, image, mask, num: Optional[int] = None, seed: int = 0,
            **kwargs) -> np.ndarray:
  """Fills the pixels where `mask` is 0 to match the rest of `image` and the
  conditioning (prompts, labels); returns float32 [B, S, S, C] in [-1, 1]
  whose kept pixels equal `image`'s exactly.

  Args:
    bundle: a diffusion model (any; GLIDE's inpainting model is best).
    image: the image(s) to complete.
    mask: 1 keep, 0 fill.
    num: samples (default: the number of images).
    seed: the PRNG seed.
    **kwargs: conditioning and sample settings, as `Bundle.sample`
      (`prompts=`, `labels=`, `guidance_scale=`, `resample=`...).
  """
  images = _images(bundle, image, _num(num, kwargs))
  batch = images.shape[0]
  size = bundle.info.image_size
  mask = check_mask(mask, batch, size, size)
  edit = EditInputs(known_image=images, known_mask=mask)
  return bundle._draw(batch, seed, _model_inputs(bundle, images, mask, kwargs), edit)


REMOVAL_PROMPT = "an empty scene"


def remove(bundle, image, mask, seed: int = 0, prompt: str = REMOVAL_PROMPT,
           **kwargs) -> np.ndarray:
  """Object removal: inpaints the region under `prompt`; a model without
  text fills it from its surroundings alone.

  The default asks for background. The empty prompt is the unconditional
  model, which fills a hole with what scenes usually hold there: on the
  shipped inpainting model the erased cell stays empty in 0.48 of test
  scenes with "" and in all of them with "an empty scene"
  (docs/editing.md)."""
  if any(c.arg == "prompts" for c in bundle.spec.conditioning):
    kwargs = dict(kwargs, prompts=[prompt] * np.asarray(validation.check_images(image)).shape[0])
  return inpaint(bundle, image, mask, seed=seed, **kwargs)


def edit(bundle, image, strength: float, mask=None, num: Optional[int] = None,
         seed: int = 0, **kwargs) -> np.ndarray:
  """Re-noise editing (SDEdit, Meng et al. 2022): noises `image` to the
  level of the step `round(strength * N)` and denoises it under the given
  prompts or labels. With a `mask`, only its 0 pixels change.

  Args:
    strength: in (0, 1]: small keeps the layout and colors, 1 starts from
      (almost) pure noise.

  Raises:
    ValueError: a strength outside (0, 1], or a bad image or mask.
  """
  if not 0.0 < float(strength) <= 1.0:
    raise ValueError(f"strength must be in (0, 1] (the fraction of the steps re-run), "
                     f"got {strength}")
  images = _images(bundle, image, _num(num, kwargs))
  batch = images.shape[0]
  known = {}
  if mask is not None:
    size = bundle.info.image_size
    known = dict(known_image=images, known_mask=check_mask(mask, batch, size, size))
    kwargs = _model_inputs(bundle, images, known["known_mask"], kwargs)
  return bundle._draw(batch, seed, kwargs,
                      EditInputs(init_image=images, strength=float(strength), **known))


def build_scene(bundle, stages: Sequence[tuple], image=None, seed: int = 0,
                num: Optional[int] = None, **kwargs) -> list[np.ndarray]:
  """A scene built one object at a time: each step inpaints its mask's
  region with its prompt ("a red circle on the left", then "a blue square
  on the right").

  Args:
    stages: (prompt, mask) pairs, in order; the first may be (prompt, None)
      to draw the first scene from nothing.
    image: the scene to start from, or None (the first step draws one).
    num: build this many scenes at once, each from its own noise (one
      compiled program per stage for the batch); None builds one.

  Returns:
    The scene after each stage: float32 [S, S, C] each, or [num, S, S, C]
    with `num`.
  """
  count = 1 if num is None else int(num)
  if count < 1:
    raise ValueError(f"num must be at least 1, got {num}")
  scenes = []
  for index, (prompt, mask) in enumerate(stages):
    if image is None or mask is None:
      if index:
        raise ValueError(f"stage {index} of the scene has no mask: only the first may draw "
                         "from nothing")
      image = bundle.sample(num=count, seed=seed, prompts=[prompt] * count, **kwargs)
    else:
      image = inpaint(bundle, image, mask, seed=seed + index, num=count,
                      prompts=[prompt] * count, **kwargs)
    scenes.append(image if num is not None else image[0])
  return scenes


def outpaint(bundle, image, side: str, pixels: int, times: int = 1, seed: int = 0,
             **kwargs) -> np.ndarray:
  """Grows a canvas by `pixels` on `side`, `times` times. Each time, a
  window of the model's size covers the new strip and the `S - pixels`
  known pixels next to it, and the strip is inpainted.

  Args:
    image: [H, W, C] (or a batch of one): the canvas. Its side across the
      growth must be the model's size S (a row for "left"/"right", a column
      for "top"/"bottom").
    side: "left", "right", "top" or "bottom".
    pixels: the strip's width, 1 to S - 1 (the rest of the window is known).

  Returns:
    float32 [H', W', C], the grown canvas.
  """
  masks_lib.check_side(side)
  size = bundle.info.image_size
  if not 0 < pixels < size:
    raise ValueError(f"outpaint pixels must be in [1, {size - 1}] (a window of the model's "
                     f"size {size} keeps the rest known); got {pixels}")
  if times < 1:
    raise ValueError(f"outpaint times must be >= 1, got {times}")
  canvas = validation.check_images(image, channels=bundle.info.channels, name="image")
  if canvas.shape[0] != 1:
    raise ValueError("outpaint grows one canvas: give one image")
  canvas = canvas[0]
  horizontal = side in ("left", "right")
  across = canvas.shape[0] if horizontal else canvas.shape[1]
  if across != size:
    raise ValueError(f"outpainting {side} needs a canvas {'height' if horizontal else 'width'}"
                     f" of {size} (the model's size); got {across}")
  for index in range(times):
    canvas = _grow_once(bundle, canvas, side, pixels, seed + index, kwargs)
  return canvas


def _grow_once(bundle, canvas, side, pixels, seed, kwargs):
  size = bundle.info.image_size
  flip = side in ("left", "top")
  work = canvas if side in ("left", "right") else canvas.transpose(1, 0, 2)
  work = work[:, ::-1] if flip else work  # grow on the right of `work`
  window = np.concatenate([work[:, -(size - pixels):],
                           np.zeros((size, pixels, work.shape[2]), np.float32)], axis=1)
  mask = masks_lib.strip(size, "right", pixels)
  if flip:
    window, mask = window[:, ::-1], mask[:, ::-1]
  if side in ("top", "bottom"):
    window, mask = window.transpose(1, 0, 2), mask.transpose(1, 0, 2)
  filled = inpaint(bundle, window, mask, seed=seed, **kwargs)[0]
  if side in ("top", "bottom"):
    filled = filled.transpose(1, 0, 2)
  if flip:
    filled = filled[:, ::-1]
  grown = np.concatenate([work, filled[:, -pixels:]], axis=1)
  grown = grown[:, ::-1] if flip else grown
  return grown if side in ("left", "right") else grown.transpose(1, 0, 2)


def panorama(bundle, image, width: int, pixels: Optional[int] = None, seed: int = 0,
             **kwargs) -> np.ndarray:
  """A canvas grown to the right until it is `width` pixels wide, `pixels`
  (default half the model's size) at a time."""
  size = bundle.info.image_size
  pixels = pixels or size // 2
  canvas = validation.check_images(image, channels=bundle.info.channels)[0]
  times = max(0, -(-(width - canvas.shape[1]) // pixels))
  if times:
    canvas = outpaint(bundle, canvas, "right", pixels, times, seed, **kwargs)
  return canvas[:, :width]


def label_swap(bundle, values: Sequence, num: int = 4, seed: int = 0,
               **kwargs) -> np.ndarray:
  """DDIM with eta = 0 from one noise tensor under each label (or prompt) in
  `values`: [len(values), num, S, S, C]. The same seed and batch give every
  row the same starting noise, which carries the layout.

  `values`: ints (class labels) or strings (prompts)."""
  arg = "prompts" if isinstance(values[0], str) else "labels"
  kwargs = dict(kwargs, method="ddim", eta=0.0)
  rows = [bundle.sample(num=num, seed=seed, **{arg: [value] * num}, **kwargs)
          for value in values]
  return np.stack(rows)


def upsample(bundle, low_res, seed: int = 0, **kwargs) -> np.ndarray:
  """An upsampler's samples from `low_res` images ([B, s, s, C], uint8 or
  float in [-1, 1]), with the config's settings (GLIDE's: DDIM "fast27",
  starting noise times 0.997) unless overridden."""
  if not bundle.spec.low_res_size:
    raise ValueError(f"this is {bundle.spec.describe()}, not an upsampler")
  low_res = validation.check_images(low_res, image_size=bundle.spec.low_res_size,
                                    channels=bundle.info.channels, name="low_res")
  return bundle.sample(num=low_res.shape[0], seed=seed, low_res=low_res, **kwargs)


def cascade(base, upsampler, seed: int = 0, upsample_settings: Optional[dict] = None,
            **kwargs) -> tuple[np.ndarray, np.ndarray]:
  """base -> upsampler in one call: (base samples [B, s, s, C], upsampled
  [B, S, S, C]). `kwargs` go to the base model (prompts, labels, settings);
  the upsampler gets the same prompts or labels (where it takes them: ADM's
  upsamplers are class-conditional) and `upsample_settings`."""
  if base.info.image_size != upsampler.spec.low_res_size:
    raise ValueError(f"the upsampler takes {upsampler.spec.low_res_size}x"
                     f"{upsampler.spec.low_res_size} images but the base model draws "
                     f"{base.info.image_size}x{base.info.image_size}")
  small = base.sample(seed=seed, **kwargs)
  takes = {c.arg for c in upsampler.spec.conditioning}
  shared = {k: kwargs[k] for k in ("prompts", "labels") if k in kwargs and k in takes}
  large = upsample(upsampler, small, seed=seed, **shared, **(upsample_settings or {}))
  return small, large
