"""The inference spec: what a trained model is, without how it was trained.

`make_spec(config, info)` builds a `ModelSpec` (network, schedule,
parameterization, variance, conditioning inputs) for the model kind
`config.task` names, from the config and the data's `DatasetInfo`. Training
extends it with an optimizer and a train step (`training/tasks.py`);
sampling, loading and the CLI need only this.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import schedules
from diffusion_jax.data.info import DatasetInfo
from diffusion_jax.inference import conditioning as cond_lib
from diffusion_jax.models import factory


@dataclasses.dataclass(frozen=True, eq=False)
class ModelSpec:
  """A model kind's network, schedule and conditioning declaration.

  Attributes:
    kind: "diffusion" (a denoiser, sampled), "classifier" (a noisy-image
      classifier, used for guidance and data filtering) or "evaluator" (a
      clean-image classifier of every attribute, which judges samples).
    model: the Flax module.
    schedule: the training (unrespaced) noise schedule.
    image_shape: (S, S, C) of the images the model takes.
    conditioning: the model's conditioning inputs (`conditioning.py`).
    targets: what a training batch carries besides the image and the
      conditioning (the classifier's label).
    parameterization: what the denoiser predicts ("eps", "x0", "v").
    variance: "fixed_small", "fixed_large", "learned_range" or "learned".
    num_classes: the classes of the data it was trained on, or None.
  """
  kind: str
  model: nn.Module
  schedule: schedules.Schedule
  image_shape: tuple
  conditioning: tuple = ()
  targets: tuple = ()
  parameterization: str = "eps"
  variance: str = "fixed_small"
  num_classes: Optional[int] = None

  @property
  def samples(self) -> bool:
    """Whether this kind draws images (a denoiser) rather than judging them."""
    return self.kind == "diffusion"

  def describe(self) -> str:
    size = "x".join(str(s) for s in self.image_shape[:2])
    classes = f" of {self.num_classes} classes" if self.num_classes else ""
    what = {"diffusion": "diffusion model", "classifier": "noisy classifier",
            "evaluator": "clean-image evaluator", "clip": "noised CLIP"}[self.kind]
    if self.kind == "diffusion":
      what = self._denoiser_kind()
    return f"a {size} {what}{classes}"

  def _denoiser_kind(self) -> str:
    keys = set(self.cond_keys)
    what = "diffusion model"
    if "inpaint_mask" in keys:
      what = "inpainting model"
    if self.low_res_size:
      what = f"upsampler (from {self.low_res_size}x{self.low_res_size})"
    return ("text-conditional " if "tokens" in keys and what != "diffusion model" else
            "text-to-image " if "tokens" in keys else "") + what

  @property
  def inpaints(self) -> bool:
    """Whether the network takes a known image and mask (GLIDE's inpainting model)."""
    return "inpaint_mask" in self.cond_keys

  @property
  def low_res_size(self) -> int:
    """The side of an upsampler's low-res input (0: not an upsampler)."""
    return next((c.size for c in self.conditioning
                 if isinstance(c, cond_lib.LowResImage)), 0)

  def init_params(self, rng: jax.Array) -> Any:
    x = jnp.zeros((1,) + tuple(self.image_shape), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    inputs = [c for c in self.conditioning + self.targets if hasattr(c, "placeholder")]
    return self.model.init(rng, x, t, **_merged(c.placeholder(1) for c in inputs))["params"]

  def apply(self, params, x, t, **kwargs):
    """The network: [B, S, S, C] x_t at original timesteps t [B] -> output."""
    return self.model.apply({"params": params}, x, t, **kwargs)

  # --- conditioning, as each input declares it ---

  @property
  def cond_keys(self) -> tuple:
    """The model keyword arguments its prepared conditioning holds ("y", "tokens")."""
    return tuple(k for c in self.conditioning for k in c.keys)

  @property
  def encoded_keys(self) -> tuple:
    """The model keyword arguments after `encode_cond` ("y", "xf_proj")."""
    return tuple(k for c in self.conditioning for k in getattr(c, "encoded_keys", c.keys))

  def encode_cond(self, params, cond: Mapping[str, Any]) -> dict:
    """`cond` with each input the network encodes once per call (a caption)
    replaced by its encoding; everything else passed through (traced)."""
    out = dict(cond)
    for c in self.conditioning:
      if hasattr(c, "encode") and all(k in cond for k in c.keys):
        values = {k: out.pop(k) for k in c.keys}
        out.update(c.encode(self.model, params, values))
    return out

  def example_fn(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A dataset example's model inputs and targets beyond the image."""
    return _merged(c.from_example(example) for c in self.conditioning + self.targets)

  def null_cond(self, batch_size: int) -> Optional[dict]:
    """The null conditioning for classifier-free guidance, or None when an
    input has no null value (the model was trained without dropout)."""
    nulls = [c.null(batch_size) for c in self.conditioning]
    if not nulls or any(n is None for n in nulls):
      return None
    return _merged(nulls) or None  # only kept inputs: nothing to guide by

  def training_cond(self, batch: Mapping[str, jax.Array], rng: jax.Array,
                    dropout: float) -> dict:
    """The model's conditioning of a train batch, each input dropped to its
    null value with probability `dropout` (traced)."""
    rngs = jax.random.split(rng, max(len(self.conditioning), 1))
    return _merged(c.for_training(r, batch, dropout)
                   for c, r in zip(self.conditioning, rngs))

  def prepare_cond(self, given: Mapping[str, Any], batch_size: Optional[int] = None,
                   rng: Optional[np.random.Generator] = None,
                   extra: tuple = ()) -> dict[str, np.ndarray]:
    """Validated model arrays from what a user passes (`labels=[...]`).

    Args:
      given: argument name -> value (None values are ignored).
      batch_size: the batch, if known; else taken from the arguments.
      rng: draws the inputs not given (`default`); without it they are required.
      extra: inputs beyond the model's own, e.g. a guiding classifier's
        target labels; where both declare an argument, the model's is used.

    Raises:
      ValueError: an argument this kind does not take, a missing one, or a
        bad value.
    """
    given = {k: v for k, v in given.items() if v is not None}
    # Every declaration of an argument prepares it (a model's caption and a
    # CLIP guide's both read `prompts`), except a guide's that the model's
    # covers (the same labels): one draw of defaults, the model's.
    inputs = [c for c in extra if not any(m.arg == c.arg and set(c.keys) <= set(m.keys)
                                          for m in self.conditioning)]
    inputs += list(self.conditioning)
    args = sorted({c.arg for c in inputs})
    unknown = sorted(set(given) - set(args))
    if unknown:
      takes = f"takes {', '.join(args)}" if args else "takes no conditioning"
      raise ValueError(f"{self.describe()} {takes}; got {', '.join(unknown)}")
    prepared = {}
    for inp in inputs:
      if inp.arg in given:
        prepared.update(inp.prepare(given[inp.arg], batch_size))
    batch_size = batch_size or cond_lib.batch_size_of(prepared)
    for inp in inputs:
      if inp.arg not in given:
        optional = getattr(inp, "optional", False)  # a default without randomness
        if batch_size is None or (rng is None and not optional):
          raise ValueError(f"{self.describe()} needs {inp.arg}")
        prepared.update(inp.default(batch_size, rng))
    return prepared

  def prepare_after(self, prompts, batch_size: int) -> dict[str, np.ndarray]:
    """A prompt schedule's later prompts, as the caption's model arrays.

    Raises:
      ValueError: this model takes no prompts, or a bad prompt list.
    """
    captions = [c for c in self.conditioning if isinstance(c, cond_lib.Caption)]
    if not captions:
      raise ValueError(f"{self.describe()} takes no prompts; a prompt schedule "
                       "(prompts_after) needs a text-to-image model")
    return captions[0].prepare(prompts, batch_size)


def _merged(parts) -> dict:
  merged = {}
  for part in parts:
    merged.update(part)
  return merged


def variance_of(config) -> str:
  return "learned_range" if config.model.learn_sigma else config.diffusion.variance


def _schedule(config) -> schedules.Schedule:
  return schedules.make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps,
                                 bool(config.diffusion.get("zero_terminal_snr", False)))


def _image_shape(info: DatasetInfo) -> tuple:
  return (info.image_size, info.image_size, info.channels)


def _diffusion_spec(config, info: DatasetInfo) -> ModelSpec:
  inputs = []
  num_classes = None
  if config.model.class_conditional:
    if not info.num_classes:
      raise ValueError(f"model.class_conditional needs labels; {config.data.name!r} has none")
    num_classes = info.num_classes
    null_label = num_classes if config.train.label_dropout > 0 else None
    inputs.append(cond_lib.ClassLabel(num_classes, null_label))
  table = (factory.label_table_size(num_classes, inputs[0].null_label is not None)
           if num_classes else None)
  if config.model.get("text_ctx"):
    if not info.captions:
      raise ValueError(f"model.text_ctx > 0 makes a text-to-image model, which needs "
                       f"captions; {config.data.name!r} has none")
    inputs.append(cond_lib.Caption(config.model.text_ctx))
  if config.model.get("inpaint"):
    inputs += [cond_lib.KnownImage(info.image_size, info.channels),
               cond_lib.KnownMask(info.image_size)]
  low_res = config.model.get("low_res_size", 0)
  if low_res:
    if info.image_size % low_res or low_res >= info.image_size:
      raise ValueError(f"model.low_res_size {low_res} must divide the image size "
                       f"{info.image_size} and be smaller")
    inputs.append(cond_lib.LowResImage(low_res, info.channels))
  model = factory.make_unet(config.model, info.image_size, info.channels, table)
  return ModelSpec("diffusion", model, _schedule(config), _image_shape(info), tuple(inputs),
                   parameterization=config.diffusion.parameterization,
                   variance=variance_of(config), num_classes=num_classes)


def _classifier_spec(config, info: DatasetInfo) -> ModelSpec:
  if not info.num_classes:
    raise ValueError(f"a classifier needs labelled data; {config.data.name!r} has none")
  model = factory.make_classifier(config.model, info.image_size, info.num_classes)
  return ModelSpec("classifier", model, _schedule(config), _image_shape(info),
                   targets=(cond_lib.LabelTarget(info.num_classes),),
                   num_classes=info.num_classes)


def _evaluator_spec(config, info: DatasetInfo) -> ModelSpec:
  if not info.attributes:
    raise ValueError(f"an evaluator needs labelled data; {config.data.name!r} has no "
                     "attributes (labels) it could predict")
  model = factory.make_evaluator(config.model, info.attributes)
  return ModelSpec("evaluator", model, _schedule(config), _image_shape(info),
                   targets=(cond_lib.AttributeTargets(info.attributes),),
                   num_classes=info.num_classes)


def _clip_spec(config, info: DatasetInfo) -> ModelSpec:
  if not info.captions:
    raise ValueError(f"a CLIP needs captions; {config.data.name!r} has none")
  schedule = _schedule(config)
  model = factory.make_clip(config.model, info.image_size, schedule.num_timesteps)
  return ModelSpec("clip", model, schedule, _image_shape(info),
                   targets=(cond_lib.ClipCaption(model.spec.text_ctx),))


# Model kinds: config.task -> builder of its spec.
KINDS: dict[str, Callable[[Any, DatasetInfo], ModelSpec]] = {
    "diffusion": _diffusion_spec, "classifier": _classifier_spec,
    "evaluator": _evaluator_spec, "clip": _clip_spec}


def make_spec(config, info: DatasetInfo) -> ModelSpec:
  """The `ModelSpec` of `config.task` for data described by `info`."""
  if config.task not in KINDS:
    raise ValueError(f"unknown task {config.task!r}; choose one of {sorted(KINDS)}")
  return KINDS[config.task](config, info)
