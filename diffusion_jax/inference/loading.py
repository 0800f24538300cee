"""One way to load a trained model for inference, and portable exports.

`load(path)` takes an export folder or a training workdir and returns a
`Bundle`: the config, the chosen weights, the `ModelSpec` and a `Sampler`,
with no optimizer and no Orbax state beyond the weights. Sample mode, export,
the data filter, `diffusion_jax.load` and the tests all load through it.

Which weights: `ema_rate` picks the EMA kept at that rate; 0 picks the raw
(non-averaged) parameters, which is what an average at rate 0 is. By default
the config's own choice: `sample.ema_rate`, or the raw parameters when
`sample.use_ema` is False (`ema_choice`).

An export is a folder that needs neither Orbax nor pickle to read:
  config.json         the run's config
  meta.json           format version, step, EMA rate, kind, the data's description
  params.safetensors  the chosen weights, named "input_blocks_1_0/in_layers_2/kernel",
                      stored as float32 or float16 (`export(dtype=...)`) and read as
                      float32

`load` also takes the name of a model that ships with the package
(`diffusion_jax.pretrained`), checked against its recorded SHA-256.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any, NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion_jax import checkpoint as ckpt_lib
from diffusion_jax import validation
from diffusion_jax.data.info import DatasetInfo
from diffusion_jax.inference import conditioning as cond_lib
from diffusion_jax.inference import editing
from diffusion_jax.inference import guide as guide_lib
from diffusion_jax.inference.sampler import Sampler, SampleSettings
from diffusion_jax.inference.spec import ModelSpec, make_spec

FORMAT_VERSION = 1
PARAMS_FILE, CONFIG_FILE, META_FILE = "params.safetensors", "config.json", "meta.json"
RAW = 0.0  # the EMA "rate" that names the raw parameters
STORAGE_DTYPES = ("float32", "float16")  # what an export may store its weights as


class PowerEMA(NamedTuple):
  """EDM2's power-function EMA of relative width `sigma_rel` (Karras et al.
  2024), kept beside the fixed-rate EMAs (`train.ema_sigma_rels`)."""
  sigma_rel: float


POWER_PREFIX = "power_"


def ema_key(choice: float | PowerEMA) -> str:
  """The name of an EMA in a train state: "0.995" for a rate, "power_0.05"
  for a power EMA."""
  if isinstance(choice, PowerEMA):
    return f"{POWER_PREFIX}{choice.sigma_rel:g}"
  return f"{choice:g}"


def sigma_rel_of_key(key: str) -> Optional[float]:
  """A power EMA key's sigma_rel, or None for a rate's key."""
  return float(key[len(POWER_PREFIX):]) if key.startswith(POWER_PREFIX) else None


def describe_ema(choice: float | PowerEMA) -> str:
  if isinstance(choice, PowerEMA):
    return f"power EMA sigma_rel {choice.sigma_rel:g}"
  return "raw weights" if float(choice) == RAW else f"EMA {float(choice):g}"


def ema_choice(sample_config) -> float | PowerEMA:
  """The weights a config samples with: the power EMA `sample.ema_sigma_rel`
  names when > 0, else `sample.ema_rate`, or RAW when `sample.use_ema` is False."""
  if not sample_config.use_ema:
    return RAW
  sigma_rel = float(sample_config.get("ema_sigma_rel", 0.0))
  return PowerEMA(sigma_rel) if sigma_rel > 0 else float(sample_config.ema_rate)


def weights_field(config, ema_rate: float | PowerEMA) -> str:
  """The train-state field holding the weights `ema_rate` names (a rate, 0
  for the raw parameters, or a `PowerEMA`).

  Raises:
    ValueError: the run keeps no such EMA.
  """
  if not isinstance(ema_rate, PowerEMA) and float(ema_rate) == RAW:
    return "params"
  kept = [ema_key(r) for r in config.train.ema_rates]
  kept += [ema_key(PowerEMA(float(s))) for s in config.train.get("ema_sigma_rels", ())]
  if ema_key(ema_rate) not in kept:
    what = (f"power EMA of sigma_rel {ema_rate.sigma_rel:g}" if isinstance(ema_rate, PowerEMA)
            else f"EMA at rate {ema_rate:g}")
    raise ValueError(f"no {what}: the run keeps {', '.join(kept) or 'none'} "
                     "(train.ema_rates, train.ema_sigma_rels; 0 takes the raw parameters)")
  return f"ema_params/{ema_key(ema_rate)}"


@dataclasses.dataclass(eq=False)
class Bundle:
  """A trained model ready to use: `bundle.sample(labels=[0, 1, 2])`.

  Attributes:
    config: the run's config.
    params: the chosen weights.
    spec: the model (`ModelSpec`): network, schedule, conditioning.
    info: the description of the data it was trained on.
    step: the training step of the weights.
    ema_rate: the EMA rate of the weights (0: the raw parameters), or a
      `PowerEMA`.
    sampler: the `Sampler`, which keeps its compiled programs.
  """
  config: ml_collections.ConfigDict
  params: Any
  spec: ModelSpec
  info: DatasetInfo
  step: int
  ema_rate: float | PowerEMA
  sampler: Sampler = dataclasses.field(init=False, repr=False)
  # Guides named by path or name, loaded once: a new load is a new program
  # for the sampler to compile.
  _guiding: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

  def __post_init__(self):
    self.sampler = Sampler(self.spec)

  @property
  def kind(self) -> str:
    return self.spec.kind

  @property
  def schedule(self):
    return self.spec.schedule

  def on_devices(self, mesh=None) -> Bundle:
    """Samples from here on sharded over `mesh` (default: every device of
    every process, data parallel): each batch is split over the devices,
    padded to a multiple of their count, and gathered. Returns self."""
    from diffusion_jax import parallel
    mesh = mesh if mesh is not None else parallel.make_mesh(-1, 1)
    self.sampler = Sampler(self.spec, mesh)
    self.params = parallel.replicate(self.params, mesh)
    return self

  def __repr__(self) -> str:
    return (f"Bundle({self.spec.describe()}, step {self.step}, "
            f"{describe_ema(self.ema_rate)})")

  def sample(self, num: Optional[int] = None, seed: int = 0, classifier=None,
             classifier_scale: float = 1.0, clip=None, clip_scale: float = 1.0,
             prompts_after=None, **kwargs) -> np.ndarray:
    """Draws samples as float32 [B, S, S, C] in [-1, 1].

    Args:
      num: how many samples (default: as many as the conditioning gives, or 1).
      seed: the PRNG seed; the samples are a pure function of it.
      classifier: a noisy classifier (a `Bundle`, or the path of an export or
        workdir) that guides the samples towards `labels` (ADM's classifier
        guidance), for a class-conditional or an unconditional model.
      classifier_scale: its scale s.
      clip: a noised CLIP (a `Bundle` or a path) that guides a text-to-image
        model's samples towards their `prompts` (GLIDE's CLIP guidance).
      clip_scale: its scale.
      prompts_after: a prompt schedule: these prompts (one per sample) from
        the step `switch_at` (a fraction of the steps, from t = T) on.
      **kwargs: the model's conditioning (`labels=[...]` for a
        class-conditional or classifier-guided model, random classes when
        omitted; `prompts=[...]` for a text-to-image one, one per sample)
        and sample settings overriding the config's `sample` section:
        method, steps, eta, guidance_scale, clip_denoised, switch_at.

    Raises:
      ValueError: an unknown argument or setting, a bad value, or a guide
        that cannot guide this model (naming the difference).
    """
    guide = self._guide(classifier, classifier_scale, clip, clip_scale)
    return self._draw(num, seed, kwargs, guide=guide, prompts_after=prompts_after)

  def _draw(self, num, seed, kwargs, edit=None, guide=None, prompts_after=None):
    """Samples with conditioning and settings `kwargs`, an optional
    `sampler.EditInputs` and guide (`editing.py` draws through this)."""
    extra = () if guide is None else (guide.target,)
    settings, cond_args = self._split(kwargs, extra)
    settings.check(self.spec)
    if num is None and not cond_args:
      num = 1
    cond = self.spec.prepare_cond(cond_args, num, np.random.default_rng(seed), extra)
    cond_after = None
    if prompts_after is not None:
      cond_after = self.spec.prepare_after(prompts_after, cond_lib.batch_size_of(cond))
    return self.sampler.sample(self.params, jax.random.PRNGKey(seed), cond, settings, num,
                               guide, cond_after, edit)

  # --- editing (editing.py) ---

  def inpaint(self, image, mask, **kwargs) -> np.ndarray:
    """Fills the pixels where `mask` is 0; see `editing.inpaint`."""
    return editing.inpaint(self, image, mask, **kwargs)

  def outpaint(self, image, side: str, pixels: int, times: int = 1, **kwargs) -> np.ndarray:
    """Grows the canvas on `side`; see `editing.outpaint`."""
    return editing.outpaint(self, image, side, pixels, times, **kwargs)

  def edit(self, image, strength: float, mask=None, **kwargs) -> np.ndarray:
    """Re-noises `image` to `strength` and denoises it (SDEdit); see `editing.edit`."""
    return editing.edit(self, image, strength, mask, **kwargs)

  def upsample(self, low_res, **kwargs) -> np.ndarray:
    """An upsampler's samples from low-res images; see `editing.upsample`."""
    return editing.upsample(self, low_res, **kwargs)

  def _guide(self, classifier, classifier_scale, clip, clip_scale):
    """The classifier or CLIP guide asked for (paths loaded), or None."""
    if classifier is not None and clip is not None:
      raise ValueError("give a classifier or a CLIP to guide with, not both")
    if classifier is not None:
      return guide_lib.make_guide(self, self._loaded(classifier, "classifier"),
                                  classifier_scale)
    if clip is not None:
      return guide_lib.make_clip_guide(self, self._loaded(clip, "clip"), clip_scale)
    return None

  def _loaded(self, model, kind: str) -> Bundle:
    """`model` (a `Bundle`, or a path or name, loaded once per Bundle)."""
    if isinstance(model, Bundle):
      return model
    if (str(model), kind) not in self._guiding:
      self._guiding[str(model), kind] = load(model, kind=kind)
    return self._guiding[str(model), kind]

  def encode(self, images, steps: str = "50", **cond_args) -> np.ndarray:
    """DDIM-inverts images (uint8, or floats in [-1, 1]) to their starting noise x_T."""
    if not self.spec.samples:
      raise ValueError(f"this is {self.spec.describe()}: it encodes nothing")
    x0 = validation.check_images(images, image_size=self.info.image_size,
                                 channels=self.info.channels)
    cond = self.spec.prepare_cond(cond_args, x0.shape[0])
    return self.sampler.encode(self.params, x0, cond, steps)

  def _split(self, kwargs, extra=()) -> tuple[SampleSettings, dict]:
    names = set(SampleSettings.names())
    args = {c.arg for c in self.spec.conditioning + tuple(extra)}
    unknown = sorted(set(kwargs) - names - args)
    if unknown:
      takes = ", ".join(sorted(args)) or "no conditioning"
      raise ValueError(f"unknown argument {unknown[0]!r}: {self.spec.describe()} takes "
                       f"{takes}, and the settings {', '.join(SampleSettings.names())}")
    settings = SampleSettings.of(self.config.sample,
                                 **{k: v for k, v in kwargs.items() if k in names})
    return settings, {k: v for k, v in kwargs.items() if k in args}


def load(path: str | pathlib.Path, ema_rate: Optional[float | PowerEMA] = None,
         kind: Optional[str] = None, step: Optional[int] = None) -> Bundle:
  """A `Bundle` from an export folder or a training workdir (its latest
  readable checkpoint).

  Args:
    path: a folder written by `export` (or `--mode=export`), or a training
      workdir with checkpoints.
    ema_rate: which weights: the EMA at this rate, 0 for the raw
      parameters, or a `PowerEMA`; default the config's choice (`ema_choice`).
    kind: the model kind the caller needs ("diffusion", "classifier"); a
      model of another kind is refused with a message saying what it is.
    step: a workdir's checkpoint at this step (kept by train.keep_every or
      train.keep_checkpoints) instead of its latest.
  """
  path = resolve(path)
  if (path / PARAMS_FILE).exists():
    bundle = _load_export(path, ema_rate)
    if step is not None and step != bundle.step:
      raise ValueError(f"{path} is an export of step {bundle.step} only, not {step}")
  elif (path / "checkpoints").is_dir():
    bundle = _load_workdir(path, ema_rate, step)
  else:
    raise FileNotFoundError(f"{path} is neither an export ({PARAMS_FILE}, {CONFIG_FILE}) "
                            "nor a training workdir (checkpoints/)")
  if kind is not None and bundle.kind != kind:
    raise ValueError(f"{path} holds {bundle.spec.describe()}, not a {kind} model")
  return bundle


def resolve(path: str | pathlib.Path) -> pathlib.Path:
  """The folder `path` names: itself where it exists, else the shipped model
  of that name (its files checked against their recorded hashes).

  Raises:
    ValueError: a bare name that is neither a folder here nor a shipped
      model (the message lists the shipped ones), or a damaged shipped model.
  """
  from diffusion_jax import pretrained
  folder = pathlib.Path(path)
  if folder.exists():
    return folder
  if str(path) in pretrained.names():
    return pretrained.folder(str(path))
  if len(folder.parts) == 1:
    raise ValueError(pretrained.unknown_name_message(str(path)))
  return folder


def _on_base(saved: dict) -> ml_collections.ConfigDict:
  """A saved config over `base_config()`: fields added since it was saved
  take their defaults."""
  from diffusion_jax import config_lib
  config = config_lib.base_config()
  config.update(saved)
  return config


def check_model_folder(path: str | pathlib.Path) -> pathlib.Path:
  """`path` if it is an export folder or a training workdir, without reading it.

  Raises:
    FileNotFoundError: it is neither.
  """
  path = resolve(path)
  if not (path / CONFIG_FILE).exists() and not (path / "checkpoints").is_dir():
    raise FileNotFoundError(f"{path} is neither an export ({PARAMS_FILE}, {CONFIG_FILE}) "
                            "nor a training workdir (checkpoints/): give --config")
  return path


def saved_config(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config an export folder or a training workdir was saved with
  (`--mode=sample` and friends use it when no --config is given)."""
  path = check_model_folder(path)
  if (path / CONFIG_FILE).exists():
    return _on_base(_read_json(path / CONFIG_FILE))
  checkpointer = ckpt_lib.Checkpointer(str(path / "checkpoints"), read_only=True)
  try:
    return _on_base(checkpointer.restore_json()[0])
  finally:
    checkpointer.close()


def _load_workdir(workdir: pathlib.Path, ema_rate, step: Optional[int] = None) -> Bundle:
  checkpointer = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), read_only=True)
  try:
    if step is not None and step not in checkpointer.complete_steps():
      raise ValueError(f"{workdir} has no checkpoint at step {step}: it keeps "
                       f"{checkpointer.complete_steps()}")
    config = _on_base(checkpointer.restore_json(step)[0])
    rate = ema_choice(config.sample) if ema_rate is None else ema_rate
    rate = rate if isinstance(rate, PowerEMA) else float(rate)
    field = weights_field(config, rate)
    values, config_json, meta, _ = checkpointer.restore_fields((field, "step"), step)
  finally:
    checkpointer.close()
  if step is not None and int(values["step"]) != step:  # it fell back past an unreadable one
    raise ValueError(f"{workdir}: the checkpoint at step {step} does not read (the warning "
                     f"above says why); the newest readable one is {int(values['step'])}")
  config = _on_base(config_json)
  info = DatasetInfo(**meta["data_info"])
  spec = make_spec(config, info)
  params = values[field]
  check_params(params, spec, f"{workdir} ({field})")
  return Bundle(config, params, spec, info, int(values["step"]), rate)


def _read_json(path: pathlib.Path) -> dict:
  """A JSON object from an export, or a one-line error saying what is wrong."""
  try:
    value = json.loads(path.read_text())
  except FileNotFoundError:
    raise FileNotFoundError(f"{path} is missing: {path.parent} is not a complete "
                            "export") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e}): the export is damaged") from None
  if not isinstance(value, dict):
    raise ValueError(f"{path} holds a {type(value).__name__}, not a JSON object")
  return value


def _read_params(path: pathlib.Path) -> dict:
  """The flat weights of an export (safetensors: no code runs on reading)."""
  from safetensors.numpy import load_file
  try:
    return load_file(str(path))
  except Exception as e:  # noqa: BLE001 (safetensors raises its own error type)
    reason = (str(e).splitlines() or [type(e).__name__])[0]
    raise ValueError(f"{path} is not a readable safetensors file ({reason}): the export "
                     "is damaged or truncated") from None


def _load_export(folder: pathlib.Path, ema_rate: Optional[float]) -> Bundle:
  meta = _read_json(folder / META_FILE)
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{folder} is export format {meta.get('format_version')}; this "
                     f"version of diffusion_jax reads format {FORMAT_VERSION}")
  missing = [k for k in ("step", "data_info") if k not in meta]
  if missing:
    raise ValueError(f"{folder / META_FILE} lacks {', '.join(missing)}: the export is damaged")
  saved_rate = _saved_ema(meta)
  if ema_rate is not None and ema_key(ema_rate) != ema_key(saved_rate):
    if isinstance(saved_rate, PowerEMA) or isinstance(ema_rate, PowerEMA):
      raise ValueError(f"{folder} holds the {describe_ema(saved_rate)} only, "
                       f"not the {describe_ema(ema_rate)}")
    raise ValueError(f"{folder} holds the weights at EMA rate {saved_rate:g} only, "
                     f"not {float(ema_rate):g}")
  config = _on_base(_read_json(folder / CONFIG_FILE))
  try:
    info = DatasetInfo(**meta["data_info"])
  except TypeError as e:
    raise ValueError(f"{folder / META_FILE}: its data_info does not describe a dataset "
                     f"({e})") from None
  spec = make_spec(config, info)
  flat = _read_params(folder / PARAMS_FILE)
  params = flax.traverse_util.unflatten_dict({tuple(k.split("/")): jnp.asarray(v, jnp.float32)
                                              for k, v in flat.items()})
  check_params(params, spec, str(folder / PARAMS_FILE))
  return Bundle(config, params, spec, info, int(meta["step"]), saved_rate)


def _saved_ema(meta: dict) -> float | PowerEMA:
  """The EMA an export holds: meta.json's "ema_sigma_rel" (a power EMA, since
  this field was added; format 1 still), else its "ema_rate"."""
  if meta.get("ema_sigma_rel"):
    return PowerEMA(float(meta["ema_sigma_rel"]))
  return float(meta.get("ema_rate") or RAW)


def _ema_meta(choice: float | PowerEMA) -> dict:
  if isinstance(choice, PowerEMA):  # a reader before power EMAs sees no rate
    return {"ema_rate": None, "ema_sigma_rel": choice.sigma_rel, "ema": describe_ema(choice)}
  return {"ema_rate": choice, "ema": describe_ema(choice)}


def check_params(params, spec: ModelSpec, where: str) -> None:
  """Raises ValueError naming the first parameter whose shape differs from
  the network `spec` builds (or that one of them lacks)."""
  expected = jax.eval_shape(spec.init_params, jax.random.PRNGKey(0))
  got = {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}
  want = {k: tuple(v.shape) for k, v in
          flax.traverse_util.flatten_dict(expected, sep="/").items()}
  for name in sorted(set(got) | set(want)):
    if got.get(name) != want.get(name):
      have = f"shape {got[name]}" if name in got else "no such parameter"
      builds = f"builds {want[name]}" if name in want else "has no such parameter"
      raise ValueError(f"{where}: {name} has {have} but {spec.describe()} {builds}")


def widen_input(params, spec: ModelSpec):
  """`params` with the input conv widened by zero kernels where `spec`'s
  network takes more input channels (an inpainting model's image and mask,
  an upsampler's low-res image), as GLIDE started its inpainting model from
  its base: at the start it computes the base model's function."""
  if "input_blocks_0_0" not in params:
    return params
  expected = jax.eval_shape(spec.init_params, jax.random.PRNGKey(0))
  have = params["input_blocks_0_0"]["kernel"]
  want = expected["input_blocks_0_0"]["kernel"].shape
  if have.shape[2] >= want[2] or have.shape[:2] + have.shape[3:] != want[:2] + want[3:]:
    return params
  extra = jnp.zeros(have.shape[:2] + (want[2] - have.shape[2],) + have.shape[3:], have.dtype)
  widened = dict(params["input_blocks_0_0"], kernel=jnp.concatenate([have, extra], axis=2))
  return dict(params, input_blocks_0_0=widened)


def _flatten_params(params, dtype: str = "float32") -> dict[str, np.ndarray]:
  """The weights by "a/b/kernel" name, as numpy arrays of `dtype`.

  Raises:
    ValueError: a weight does not fit `dtype` (float16 overflows past 65504).
  """
  if dtype not in STORAGE_DTYPES:
    raise ValueError(f"cannot store weights as {dtype!r}: choose one of "
                     f"{', '.join(STORAGE_DTYPES)}")
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
  stored = {}
  for name, value in flat.items():
    value = np.asarray(jax.device_get(value), np.float32)
    with np.errstate(over="ignore"):  # an overflow is reported below, by name
      stored[name] = value.astype(dtype)
    if not np.isfinite(stored[name]).all() and np.isfinite(value).all():
      raise ValueError(f"{name} holds values up to {np.abs(value).max():g}, beyond "
                       f"{dtype}'s range: export it as float32")
  return stored


def export(bundle: Bundle, output: str | pathlib.Path,
           origin: Optional[dict] = None, dtype: str = "float32") -> pathlib.Path:
  """Writes `bundle`'s weights, config and description as a portable folder.

  `origin` (JSON) records where the weights came from (a converted
  checkpoint's kind, flags and file hashes) in meta.json. `dtype` is the
  weights' storage: "float16" halves the file (each weight rounded to 11
  significant bits); they are read back as float32 either way.

  The folder is written beside `output` and renamed into place, so a reader
  (or a crash) never meets half an export; an existing export there is
  replaced whole.
  """
  from safetensors.numpy import save_file
  output = pathlib.Path(output)
  if output.exists() and any(output.iterdir()) and not (output / PARAMS_FILE).exists():
    raise ValueError(f"{output} exists and is not an export: choose another --output")
  stored = _flatten_params(bundle.params, dtype)  # before any file is touched
  output.parent.mkdir(parents=True, exist_ok=True)
  staging = output.with_name(f".{output.name}.writing-{os.getpid()}")
  shutil.rmtree(staging, ignore_errors=True)
  staging.mkdir()
  save_file(stored, str(staging / PARAMS_FILE))
  (staging / CONFIG_FILE).write_text(bundle.config.to_json(indent=2))
  (staging / META_FILE).write_text(json.dumps({
      "format_version": FORMAT_VERSION, "step": bundle.step, **_ema_meta(bundle.ema_rate),
      "data_info": dataclasses.asdict(bundle.info), "task": bundle.kind, "dtype": dtype,
      **({"origin": origin} if origin else {})}, indent=2))
  if output.exists():
    replaced = output.with_name(f".{output.name}.replaced-{os.getpid()}")
    output.rename(replaced)
    staging.rename(output)
    shutil.rmtree(replaced)
  else:
    staging.rename(output)
  return output
