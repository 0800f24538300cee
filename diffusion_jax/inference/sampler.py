"""Drawing samples from a trained model: one `Sampler` per model spec.

A `Sampler` owns its compiled programs, one per (settings, batch size): the
parameters, the PRNG key and the conditioning are arguments of each program,
never constants folded into it, so new labels, a new seed or newer EMA
parameters reuse the compilation (as flax's gemma `Sampler` does).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from diffusion_jax import guidance, parallel, platform, sampling, schedules
from diffusion_jax.inference import conditioning as cond_lib
from diffusion_jax.inference.spec import ModelSpec


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """What a compiled sampler is specialised on (a config's `sample` section).

  Attributes:
    method: "ddpm" (ancestral), "ddim", or a solver of `sampling.METHODS`
      ("dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "heun"; "euler" and
      "euler_ancestral" are DDIM at eta 0 and 1).
    steps: a respacing spec of the training schedule, e.g. "100" or "ddim50".
    eta: DDIM's noise scale (0: deterministic).
    guidance_scale: classifier-free guidance, GLIDE's s (1: off); needs a
      model trained with condition dropout.
    clip_denoised: clip each predicted x_0 to [-1, 1].
    switch_at: with a prompt schedule, the fraction of the steps (from
      t = T) drawn with the first prompts; the rest use `prompts_after`.
    temperature: scales the starting noise (GLIDE's upsampler: 0.997).
    resample, jump: RePaint's resampling when inpainting with a model not
      trained to inpaint (resample 1: off; RePaint's defaults 10, 10).
  """
  method: str = "ddim"
  steps: str = "50"
  eta: float = 0.0
  guidance_scale: float = 1.0
  clip_denoised: bool = True
  switch_at: float = 1.0
  temperature: float = 1.0
  resample: int = 1
  jump: int = 10

  @classmethod
  def names(cls) -> tuple:
    return tuple(f.name for f in dataclasses.fields(cls))

  @classmethod
  def of(cls, sample_config: Mapping[str, Any], **overrides) -> SampleSettings:
    """The settings of a config's `sample` section, with `overrides`.

    Raises:
      ValueError: an override that is not a setting (a typo like `stesp`).
    """
    unknown = sorted(set(overrides) - set(cls.names()))
    if unknown:
      raise ValueError(f"unknown sample setting {unknown[0]!r}; the settings are "
                       f"{', '.join(cls.names())}")
    values = {name: sample_config.get(name, getattr(cls, name)) for name in cls.names()}
    values.update(overrides)
    return cls(str(values["method"]), str(values["steps"]), float(values["eta"]),
               float(values["guidance_scale"]), bool(values["clip_denoised"]),
               float(values["switch_at"]), float(values["temperature"]),
               int(values["resample"]), int(values["jump"]))

  def check(self, spec: ModelSpec) -> None:
    """Raises a one-line ValueError for settings this model cannot sample with."""
    if not spec.samples:
      raise ValueError(f"this is {spec.describe()}, which judges images and draws none: "
                       "sample from a diffusion model")
    if self.method not in sampling.METHODS:
      raise ValueError(f"unknown sample.method {self.method!r}; choose one of "
                       f"{list(sampling.METHODS)}")
    schedules.space_timesteps(spec.schedule.num_timesteps, self.steps,
                              spec.schedule.alphas_cumprod)
    if self.eta < 0:
      raise ValueError(f"sample.eta must be >= 0, got {self.eta}")
    if self.guidance_scale != 1.0 and spec.null_cond(1) is None:
      raise ValueError("sample.guidance_scale != 1 needs a model trained with "
                       "train.label_dropout > 0 (a null class for classifier-free guidance)")
    if not 0.0 <= self.switch_at <= 1.0:
      raise ValueError(f"sample.switch_at must be in [0, 1], got {self.switch_at}")
    if self.temperature <= 0:
      raise ValueError(f"sample.temperature must be > 0, got {self.temperature}")
    if self.resample < 1 or self.jump < 1:
      raise ValueError(f"sample.resample and sample.jump must be >= 1, got "
                       f"{self.resample} and {self.jump}")

  def program_key(self) -> tuple:
    """What the compiled program is specialised on: the CFG and prompt-switch
    values are its arguments (a scale sweep compiles once), only whether CFG
    doubles the batch is not."""
    return (self.method, self.steps, self.eta, self.clip_denoised,
            self.guidance_scale != 1.0, self.resample, self.jump)

  def switch_timestep(self, fast: schedules.Schedule) -> int:
    """The original timestep from which on (t below it) `prompts_after` is
    used: the first round(switch_at * steps) steps from t = T use the first."""
    steps = fast.num_timesteps
    first = round(self.switch_at * steps)
    if first == 0:
      return np.iinfo(np.int32).max  # every step uses prompts_after
    return int(np.asarray(fast.timesteps)[steps - first])


@dataclasses.dataclass(frozen=True)
class EditInputs:
  """What an edit starts from: arguments (traced) of the compiled sampler,
  so a new mask, image or strength reuses the compilation.

  Attributes:
    known_image, known_mask: [B, S, S, C] in [-1, 1] and [B, S, S, 1] (1 =
      keep): pixels the samples keep exactly. An inpainting model also takes
      them as its inputs and has them pasted into each predicted x_0
      (GLIDE); any other model has the known region of each x_{t-1}
      replaced by the known image noised to its level.
    init_image: [B, S, S, C] an image to re-noise and denoise (SDEdit).
    strength: in (0, 1], how far `init_image` is noised: the fraction of
      the steps run.
  """
  known_image: Optional[np.ndarray] = None
  known_mask: Optional[np.ndarray] = None
  init_image: Optional[np.ndarray] = None
  strength: float = 1.0

  def arrays(self) -> dict:
    return {k: v for k, v in (("known_image", self.known_image),
                              ("known_mask", self.known_mask),
                              ("init_image", self.init_image)) if v is not None}

  def program_key(self) -> tuple:
    return (self.known_mask is not None, self.init_image is not None)


class Sampler:
  """Samples and DDIM inversions of one model, compiled once per settings.

  Args:
    spec: the model.
    mesh: when given, every batch is sharded over all of its devices (all
      processes' devices on a multi-host mesh) and the result is gathered;
      batches are padded to a multiple of the device count and trimmed.
  """

  def __init__(self, spec: ModelSpec, mesh: Optional[Mesh] = None):
    self.spec, self.mesh = spec, mesh
    self._compiled: dict = {}

  def sample(self, params, rng: jax.Array, cond: Mapping[str, np.ndarray],
             settings: SampleSettings, batch_size: Optional[int] = None,
             guide=None, cond_after: Optional[Mapping[str, np.ndarray]] = None,
             edit: Optional[EditInputs] = None) -> np.ndarray:
    """Images float32 [B, S, S, C] in [-1, 1].

    Args:
      params: the network's parameters.
      rng: a PRNG key; the samples are a pure function of it.
      cond: prepared conditioning (`spec.prepare_cond`), [B, ...] each; with
        a guide, its targets too ("y", or a CLIP's caption tokens).
      settings: how to sample (checked here).
      batch_size: B when `cond` is empty (an unconditional model).
      guide: a `guide.ClassifierGuide` or `guide.ClipGuide`, or None. Its
        parameters and scale are arguments of the compiled program.
      cond_after: a prompt schedule's second conditioning (the model's own
        inputs, [B, ...]), used from `settings.switch_at` on.
      edit: known pixels to keep, or an image to re-noise (`EditInputs`).
    """
    settings.check(self.spec)
    batch = _batch_size(cond, batch_size)
    if cond_after is not None and _batch_size(cond_after, batch) != batch:
      raise ValueError("prompts_after must give one prompt per sample, as prompts")
    if cond_after is not None and guide is not None and guide.target.arg == "prompts":
      raise ValueError("a prompt schedule (prompts_after) with CLIP guidance is not "
                       "supported: the CLIP would guide towards the first prompts only")
    edit = edit or EditInputs()
    if edit.arrays() and _batch_size(edit.arrays(), batch) != batch:
      raise ValueError("the edit's images and masks must be one per sample")
    padded = self._padded(batch)
    guide_spec = None if guide is None else guide.spec
    key = ("sample", settings.program_key(), padded, guide_spec, cond_after is None,
           edit.program_key())
    fn = self._program(key, lambda: self._build_sample(settings, padded, guide,
                                                       cond_after is not None))
    guide_args = ((None, None) if guide is None else
                  (self._placed(guide.params), np.float32(guide.scale)))
    after = None if cond_after is None else _pad(cond_after, padded)
    switch_t = settings.switch_timestep(schedules.respace(self.spec.schedule, settings.steps))
    images = fn(self._placed(params), _raw_key(rng), _pad(cond, padded), after,
                np.float32(settings.guidance_scale), np.int32(switch_t), *guide_args,
                np.float32(settings.temperature), _pad(edit.arrays(), padded),
                np.float32(edit.strength))
    return np.asarray(images)[:batch]

  def encode(self, params, x0: np.ndarray, cond: Mapping[str, np.ndarray],
             steps: str = "50") -> np.ndarray:
    """x_T [B, S, S, C]: the DDIM ODE run forward from images x0 in [-1, 1]."""
    schedules.space_timesteps(self.spec.schedule.num_timesteps, steps,
                              self.spec.schedule.alphas_cumprod)
    batch = x0.shape[0]
    padded = self._padded(batch)
    fn = self._program(("encode", str(steps), padded), lambda: self._build_encode(str(steps)))
    return np.asarray(fn(self._placed(params), _pad({"x": x0}, padded)["x"],
                         _pad(cond, padded)))[:batch]

  def _program(self, key, build):
    if key not in self._compiled:
      self._compiled[key] = build()
    return self._compiled[key]

  def _padded(self, batch: int) -> int:
    devices = 1 if self.mesh is None else self.mesh.devices.size
    return -(-batch // devices) * devices

  def _placed(self, params):
    return params if self.mesh is None else parallel.replicate(params, self.mesh)

  def _jit(self, fn):
    if self.mesh is None:
      return platform.jit(fn)
    return platform.jit(fn, out_shardings=parallel.replicated(self.mesh))

  def _model_fn(self, params):
    """The network as `model_fn(x, t, **cond)`, given only its own (encoded)
    inputs (guidance targets in `cond` go to the guide alone)."""
    keys = self.spec.encoded_keys

    def model_fn(x, t, **cond):
      return self.spec.apply(params, x, t, **{k: v for k, v in cond.items() if k in keys})
    return model_fn

  def _batch_sharding(self):
    return None if self.mesh is None else parallel.batch_sharding(self.mesh)

  def _build_sample(self, settings: SampleSettings, batch: int, guide, scheduled: bool):
    """The compiled sampler of `settings.program_key()`: the CFG scale and the
    prompt schedule's switch timestep are its arguments."""
    spec = self.spec
    fast = schedules.respace(spec.schedule, settings.steps)
    shape = (batch,) + tuple(spec.image_shape)
    null = spec.null_cond(1) if settings.guidance_scale != 1.0 else None

    def sample_fn(params, rng, cond, cond_after, cfg_scale, switch_t, guide_params,
                  guide_scale, temperature, edit, strength):
      # Text is encoded here, once per call, not at every step.
      cond = spec.encode_cond(params, cond)
      model_fn = self._model_fn(params)
      if null is not None:
        model_fn = guidance.classifier_free(model_fn, cfg_scale,
                                            spec.encode_cond(params, null))
      if scheduled:
        model_fn = guidance.switched(model_fn, switch_t,
                                     spec.encode_cond(params, cond_after))
      cond_fn = None
      if guide is not None:
        cond = guide.encode_cond(guide_params, cond)
        cond_fn = guide.cond_fn(guide_params, guide_scale)
      known = None
      if "known_mask" in edit:
        known = sampling.Known(edit["known_image"], edit["known_mask"])
      images = sampling.sample(model_fn, fast, shape, rng, method=settings.method,
                               eta=settings.eta, clip_denoised=settings.clip_denoised,
                               parameterization=spec.parameterization,
                               variance=spec.variance, cond_fn=cond_fn,
                               temperature=temperature, known=known,
                               known_mode="x0" if spec.inpaints else "x_t",
                               resample=settings.resample if known is not None else 1,
                               jump=settings.jump, init_image=edit.get("init_image"),
                               strength=strength, sharding=self._batch_sharding(), **cond)
      # The last step's mean (shifted by a guide's gradient) may leave
      # [-1, 1] slightly: images are promised in range.
      return jnp.clip(images, -1.0, 1.0)
    return self._jit(sample_fn)

  def _build_encode(self, steps: str):
    spec = self.spec
    fast = schedules.respace(spec.schedule, steps)

    def encode_fn(params, x0, cond):
      cond = spec.encode_cond(params, cond)
      return sampling.ddim_encode(self._model_fn(params), fast, x0,
                                  parameterization=spec.parameterization,
                                  variance=spec.variance, sharding=self._batch_sharding(),
                                  **cond)
    return self._jit(encode_fn)


def _batch_size(cond: Mapping[str, np.ndarray], batch_size: Optional[int]) -> int:
  from_cond = cond_lib.batch_size_of(cond)
  if from_cond is not None and batch_size is not None and from_cond != batch_size:
    raise ValueError(f"the conditioning is for {from_cond} samples but batch_size is "
                     f"{batch_size}")
  if from_cond is None and batch_size is None:
    raise ValueError("the batch size is unknown (no conditioning and no batch_size)")
  return int(batch_size if from_cond is None else from_cond)


def _raw_key(rng: jax.Array) -> np.ndarray:
  """A PRNG key as host uint32 data (the same on every process)."""
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  return np.asarray(rng)


def _pad(arrays: Mapping[str, np.ndarray], size: int) -> dict:
  """Each array padded along the batch by repeating its last row."""
  padded = {}
  for key, value in arrays.items():
    value = np.asarray(value)
    extra = size - value.shape[0]
    padded[key] = (value if extra == 0 else
                   np.concatenate([value, np.repeat(value[-1:], extra, axis=0)]))
  return padded
