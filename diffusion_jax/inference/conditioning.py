"""What a model is conditioned on: one declaration per conditioning input.

A model kind lists its inputs (`spec.ModelSpec.conditioning`); training,
initialisation, sampling, `Bundle` and the CLI read the list and special-case
nothing. Each input says:

- `arg`: the name users give it (`bundle.sample(labels=...)`, `sample.labels`);
- `keys`: the model's keyword arguments it supplies (the UNet's `y`);
- `from_example`: how a dataset example makes it (on the host, in the pipeline);
- `placeholder`: dummy values for initialising the network;
- `null`: its null value, for condition dropout in training and for
  classifier-free guidance, or None when the model has none; {} when it is
  kept as given under guidance (images: GLIDE guides an inpainting model
  with the same known pixels in both halves);
- `for_training`: what the (traced) train step feeds the network from a
  batch: condition dropout, training masks, low-res augmentation;
- `prepare`: validation of what a user passes, as model-ready arrays;
- `default`: values for a batch when the user passes none.

An input the network encodes once per sample call (a caption, whose text
model runs once, not at every step) also has `encode(model, params, values)`
and `encoded_keys`, the model arguments the encoding supplies instead.

Inpainting adds a known image and mask (`KnownImage`, `KnownMask`),
upsampling a low-resolution image (`LowResImage`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import masks as masks_lib
from diffusion_jax import validation
from diffusion_jax.data.info import to_model_image
from diffusion_jax.text import tokenizer as tok_lib

Arrays = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class ClassLabel:
  """A class label, embedded by the network (guided-diffusion's `y`).

  Attributes:
    num_classes: the classes of the data, 0 to num_classes - 1.
    null_label: the extra "no class" row of the embedding, for
      classifier-free guidance (None when trained without label dropout).
  """
  num_classes: int
  null_label: Optional[int] = None
  arg: str = "labels"
  keys: tuple = ("y",)

  def from_example(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {"y": np.int32(example["label"])}

  def placeholder(self, batch_size: int) -> dict[str, jax.Array]:
    return {"y": jnp.zeros((batch_size,), jnp.int32)}

  def null(self, batch_size: int) -> Optional[dict[str, np.ndarray]]:
    if self.null_label is None:
      return None
    return {"y": np.full((batch_size,), self.null_label, np.int32)}

  def for_training(self, rng: jax.Array, batch: Arrays, prob: float) -> dict[str, jax.Array]:
    """Replaces each label by the null class with probability `prob`."""
    labels = batch["y"]
    if prob <= 0:
      return {"y": labels}
    if self.null_label is None:
      raise ValueError("condition dropout needs a null class")
    keep = ~jax.random.bernoulli(rng, prob, labels.shape)
    return {"y": jnp.where(keep, labels, self.null_label)}

  def prepare(self, value, batch_size: Optional[int]) -> dict[str, np.ndarray]:
    return {"y": validation.check_labels(value, self.num_classes, batch_size, name=self.arg)}

  def default(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Uniformly random classes (guided-diffusion's image_sample.py)."""
    return {"y": rng.integers(0, self.num_classes, (batch_size,)).astype(np.int32)}


def _caption_text(caption) -> str:
  return caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)


@dataclasses.dataclass(frozen=True)
class Caption:
  """A caption for GLIDE's text model: GPT-2 tokens and mask [B, text_ctx].

  Its null value, for caption dropout and classifier-free guidance, is the
  empty prompt (all padding, mask False), as GLIDE's. The UNet's text model
  encodes it once per sample call (`encode`).
  """
  text_ctx: int
  arg: str = "prompts"
  keys: tuple = ("tokens", "mask")
  encoded_keys: tuple = ("xf_proj", "xf_out")

  def from_example(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    tokens, mask = tok_lib.pad_and_mask([_caption_text(example["caption"])], self.text_ctx)
    return {"tokens": tokens[0], "mask": mask[0]}

  def placeholder(self, batch_size: int) -> dict[str, jax.Array]:
    return {"tokens": jnp.zeros((batch_size, self.text_ctx), jnp.int32),
            "mask": jnp.ones((batch_size, self.text_ctx), bool)}

  def null(self, batch_size: int) -> dict[str, np.ndarray]:
    tokens, mask = tok_lib.pad_and_mask([""] * batch_size, self.text_ctx)
    return {"tokens": tokens, "mask": mask}

  def for_training(self, rng: jax.Array, batch: Arrays, prob: float) -> dict[str, jax.Array]:
    """Replaces each caption by the empty prompt with probability `prob`."""
    tokens, mask = batch["tokens"], batch["mask"]
    if prob <= 0:
      return {"tokens": tokens, "mask": mask}
    keep = ~jax.random.bernoulli(rng, prob, tokens.shape[:1])[:, None]  # [B, 1]
    return {"tokens": jnp.where(keep, tokens, tok_lib.GPT2_END), "mask": mask & keep}

  def prepare(self, value, batch_size: Optional[int]) -> dict[str, np.ndarray]:
    tokens, mask = tok_lib.pad_and_mask(
        tok_lib.check_prompts(value, batch_size, name=self.arg), self.text_ctx)
    return {"tokens": tokens, "mask": mask}

  def default(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    raise ValueError(f"a text-to-image model needs {self.arg}: one per sample")

  def encode(self, model, params, values: Arrays) -> dict[str, jax.Array]:
    """The text model's output for the tokens: {"xf_proj", "xf_out"}."""
    xf_proj, xf_out = model.encode_text(params, values["tokens"], values["mask"])
    return {"xf_proj": xf_proj, "xf_out": xf_out}


@dataclasses.dataclass(frozen=True)
class ClipCaption:
  """A caption for the noised CLIP: CLIP-BPE tokens [B, text_ctx] and lens [B].

  Both a CLIP's training target and a CLIP guide's input, from the same
  `prompts` the diffusion model takes.
  """
  text_ctx: int
  arg: str = "prompts"
  keys: tuple = ("clip_tokens", "clip_lens")

  def from_example(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    tokens, lens = tok_lib.pad_and_lens([_caption_text(example["caption"])], self.text_ctx)
    return {"clip_tokens": tokens[0], "clip_lens": lens[0]}

  def placeholder(self, batch_size: int) -> dict[str, jax.Array]:
    return {"clip_tokens": jnp.zeros((batch_size, self.text_ctx), jnp.int32),
            "clip_lens": jnp.ones((batch_size,), jnp.int32)}

  def prepare(self, value, batch_size: Optional[int]) -> dict[str, np.ndarray]:
    tokens, lens = tok_lib.pad_and_lens(
        tok_lib.check_prompts(value, batch_size, name=self.arg), self.text_ctx)
    return {"clip_tokens": tokens, "clip_lens": lens}

  def default(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    raise ValueError(f"CLIP guidance needs {self.arg}: one per sample")


def _broadcast(array: np.ndarray, batch_size: Optional[int], name: str) -> np.ndarray:
  """One image (or mask) for the whole batch, or one per sample."""
  if batch_size is None or array.shape[0] == batch_size:
    return array
  if array.shape[0] == 1:
    return np.repeat(array, batch_size, axis=0)
  raise ValueError(f"{array.shape[0]} {name} for a batch of {batch_size}: give one, "
                   "or one per sample")


@dataclasses.dataclass(frozen=True)
class KnownImage:
  """The image an inpainting model completes (GLIDE's `inpaint_image`):
  float32 [B, S, S, C]; only the pixels `KnownMask` keeps matter. In
  training, the batch's own image. Default zeros (nothing known)."""
  image_size: int
  channels: int
  arg: str = "image"
  keys: tuple = ("inpaint_image",)
  optional: bool = True  # default zeros, drawn without randomness

  def from_example(self, example: Mapping[str, Any]) -> dict:
    return {}  # the batch's image, in `for_training`

  def placeholder(self, batch_size: int) -> dict[str, jax.Array]:
    return {"inpaint_image": jnp.zeros(self._shape(batch_size), jnp.float32)}

  def null(self, batch_size: int) -> dict:
    return {}  # guidance keeps the known pixels in both halves

  def for_training(self, rng: jax.Array, batch: Arrays, prob: float) -> dict[str, jax.Array]:
    return {"inpaint_image": batch["image"]}

  def prepare(self, value, batch_size: Optional[int]) -> dict[str, np.ndarray]:
    images = validation.check_images(value, image_size=self.image_size,
                                     channels=self.channels, name=self.arg)
    return {"inpaint_image": _broadcast(images, batch_size, "images")}

  def default(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"inpaint_image": np.zeros(self._shape(batch_size), np.float32)}

  def _shape(self, batch_size: int) -> tuple:
    return (batch_size, self.image_size, self.image_size, self.channels)


@dataclasses.dataclass(frozen=True)
class KnownMask:
  """Where an inpainting model's known image holds: float32 [B, S, S, 1], 1
  kept, 0 to fill (GLIDE's `inpaint_mask`). In training, random boxes and
  brush strokes, and on scenes that store their cells grid cells too
  (`masks.random_masks`). Default zeros (nothing known)."""
  image_size: int
  arg: str = "mask"
  keys: tuple = ("inpaint_mask",)
  optional: bool = True

  def from_example(self, example: Mapping[str, Any]) -> dict:
    """The masks are drawn in `for_training`; a scene's occupied cells
    (bool [9], from "cell_shape") go with the batch to aim them."""
    if "cell_shape" not in example:
      return {}
    return {"occupied_cells": np.asarray(example["cell_shape"]) >= 0}

  def placeholder(self, batch_size: int) -> dict[str, jax.Array]:
    return {"inpaint_mask": jnp.zeros(self._shape(batch_size), jnp.float32)}

  def null(self, batch_size: int) -> dict:
    return {}

  def for_training(self, rng: jax.Array, batch: Arrays, prob: float) -> dict[str, jax.Array]:
    batch_size, height, width = batch["image"].shape[:3]
    return {"inpaint_mask": masks_lib.random_masks(rng, batch_size, height, width,
                                                   batch.get("occupied_cells"))}

  def prepare(self, value, batch_size: Optional[int]) -> dict[str, np.ndarray]:
    array = np.asarray(value)
    if array.ndim == 2:
      array = array[..., None]
    if array.ndim == 3:
      array = array[None]
    mask = validation.check_mask(array, (array.shape[0], self.image_size, self.image_size))
    return {"inpaint_mask": _broadcast(mask, batch_size, "masks")}

  def default(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"inpaint_mask": np.zeros(self._shape(batch_size), np.float32)}

  def _shape(self, batch_size: int) -> tuple:
    return (batch_size, self.image_size, self.image_size, 1)


# Training-only degradation of an upsampler's low-res input, so that it
# tolerates a base model's samples: half of the examples are blurred by a
# Gaussian of std U(0.3, 1.0) low-res pixels, then noised with std U(0, 0.08)
# (in [-1, 1] units). Sampling feeds the low-res image as it is: GLIDE's
# upsampler has no noise-level input, and ours keeps GLIDE's inputs.
LOW_RES_BLUR = (0.3, 1.0)
LOW_RES_NOISE = 0.08


def degrade_low_res(rng: jax.Array, low_res: jax.Array) -> jax.Array:
  """`LOW_RES_BLUR` and `LOW_RES_NOISE` applied to half of [B, s, s, C] (traced)."""
  pick_rng, sigma_rng, std_rng, noise_rng = jax.random.split(rng, 4)
  batch = low_res.shape[0]
  sigma = jax.random.uniform(sigma_rng, (batch, 1), minval=LOW_RES_BLUR[0],
                             maxval=LOW_RES_BLUR[1])
  taps = jnp.arange(-2, 3, dtype=jnp.float32)[None, :]  # [1, 5]
  kernel = jnp.exp(-0.5 * (taps / sigma) ** 2)
  kernel = kernel / kernel.sum(-1, keepdims=True)  # [B, 5]
  padded = jnp.pad(low_res, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
  size_y, size_x = low_res.shape[1:3]
  k = kernel[:, :, None, None]
  rows = sum(k[:, i, None] * padded[:, i:i + size_y] for i in range(5))  # [B, s, s+4, C]
  blurred = sum(k[:, i, None] * rows[:, :, i:i + size_x] for i in range(5))
  std = jax.random.uniform(std_rng, (batch, 1, 1, 1), maxval=LOW_RES_NOISE)
  degraded = jnp.clip(blurred + std * jax.random.normal(noise_rng, low_res.shape), -1, 1)
  pick = jax.random.bernoulli(pick_rng, 0.5, (batch, 1, 1, 1))
  return jnp.where(pick, degraded, low_res)


@dataclasses.dataclass(frozen=True)
class LowResImage:
  """An upsampler's low-resolution input: float32 [B, s, s, C]. From a
  dataset example's "low_res" render when it has one of this size (shapes'
  "..._to_..." configs: the same scene at both sizes), else its image
  resized; degraded in training (`degrade_low_res`)."""
  size: int
  channels: int
  arg: str = "low_res"
  keys: tuple = ("low_res",)

  def from_example(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    image = example["low_res"] if "low_res" in example else example["image"]
    return {"low_res": to_model_image(image, self.size, self.channels)}

  def placeholder(self, batch_size: int) -> dict[str, jax.Array]:
    return {"low_res": jnp.zeros((batch_size, self.size, self.size, self.channels))}

  def null(self, batch_size: int) -> dict:
    return {}

  def for_training(self, rng: jax.Array, batch: Arrays, prob: float) -> dict[str, jax.Array]:
    return {"low_res": degrade_low_res(rng, batch["low_res"])}

  def prepare(self, value, batch_size: Optional[int]) -> dict[str, np.ndarray]:
    images = validation.check_images(value, image_size=self.size, channels=self.channels,
                                     name=self.arg)
    return {"low_res": _broadcast(images, batch_size, "low-res images")}

  def default(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    raise ValueError(f"an upsampler needs {self.arg}: the {self.size}x{self.size} images "
                     "to upsample")


def batch_size_of(values: Arrays) -> Optional[int]:
  """The leading size shared by prepared conditioning arrays (None if none)."""
  sizes = {int(np.shape(v)[0]) for v in values.values()}
  if len(sizes) > 1:
    raise ValueError(f"conditioning inputs disagree on the batch size: {sorted(sizes)}")
  return sizes.pop() if sizes else None


@dataclasses.dataclass(frozen=True)
class LabelTarget:
  """The class label as a training target (the noisy classifier), not an input."""
  num_classes: int

  def from_example(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {"label": np.int32(example["label"])}


@dataclasses.dataclass(frozen=True)
class AttributeTargets:
  """Every attribute of an example as a training target (the evaluator):
  ((name, number of values), ...), each read as an int32 under its name."""
  attributes: tuple

  def from_example(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {name: np.int32(example[name]) for name, _ in self.attributes}
