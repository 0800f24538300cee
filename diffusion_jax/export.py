"""Portable trained models, and loading them (or a workdir) for sampling.

An export is a folder that needs neither Orbax nor pickle to read:
  config.json         the run's config
  meta.json           format version, step, EMA rate, the data's description
  params.safetensors  the EMA parameters, named "input_blocks_1_0/in_layers_2/kernel"

`load(path)` takes an export folder or a training workdir (its latest
checkpoint) and returns a `Bundle`: config, parameters, schedule and model,
ready to sample, without optimizer state.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion_jax import generate, parallel, validation
from diffusion_jax.data.pipeline import DatasetInfo
from diffusion_jax.training import state as state_lib
from diffusion_jax.training import tasks

FORMAT_VERSION = 1
PARAMS_FILE, CONFIG_FILE, META_FILE = "params.safetensors", "config.json", "meta.json"


@dataclasses.dataclass
class Bundle:
  """A trained model ready to use: `bundle.sample(labels=[0, 1, 2])`."""
  config: ml_collections.ConfigDict
  params: Any
  task: tasks.Task
  info: DatasetInfo
  step: int
  ema_rate: Optional[float]

  @property
  def schedule(self):
    return self.task.schedule

  def sample(self, labels: Optional[Sequence[int]] = None, num: Optional[int] = None,
             seed: int = 0, **sample_overrides) -> np.ndarray:
    """Draws samples as float32 [B, S, S, C] in [-1, 1].

    Args:
      labels: one class per sample (class-conditional models).
      num: how many samples (unconditional models; default len(labels)).
      seed: the PRNG seed.
      **sample_overrides: fields of the config's `sample` section (method,
        steps, eta, guidance_scale, clip_denoised).
    """
    sample_config = ml_collections.ConfigDict(self.config.sample.to_dict())
    sample_config.update(sample_overrides)
    if self.task.num_classes:
      labels = validation.check_labels(labels if labels is not None else 0,
                                       self.task.num_classes, num)
    else:
      if labels is not None:
        validation.check_labels(labels, None)
      labels = np.zeros((num or 1,), np.int32)
    fn = generate.make_sample_fn(self.task, sample_config, len(labels))
    return np.asarray(fn(self.params, jax.random.PRNGKey(seed), jnp.asarray(labels)))

  def encode(self, images, labels: Optional[Sequence[int]] = None, steps: str = "50"):
    """DDIM-inverts images (uint8 or [-1, 1]) to their starting noise x_T."""
    x0 = validation.check_images(images, image_size=self.info.image_size,
                                 channels=self.info.channels)
    labels = (validation.check_labels(labels, self.task.num_classes, x0.shape[0])
              if self.task.num_classes else np.zeros((x0.shape[0],), np.int32))
    fn = generate.make_encode_fn(self.task, steps)
    return np.asarray(fn(self.params, jnp.asarray(x0), jnp.asarray(labels)))


def _flatten_params(params) -> dict[str, np.ndarray]:
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
  return {k: np.asarray(jax.device_get(v), np.float32) for k, v in flat.items()}


def _choose_ema(state, ema_rate):
  if not state.ema_params:
    return state.params, None
  keys = list(state.ema_params)
  key = state_lib.ema_key(ema_rate) if ema_rate is not None else keys[0]
  if key not in state.ema_params:
    raise ValueError(f"no EMA at rate {ema_rate}; this run keeps {keys}")
  return state.ema_params[key], float(key)


def _load_workdir(workdir: pathlib.Path, ema_rate) -> Bundle:
  state, config, meta = load_train_state(workdir)
  info = DatasetInfo(**meta["data_info"])
  params, rate = _choose_ema(state, ema_rate)
  return Bundle(config, params, tasks.make_task(config, info), info, int(state.step), rate)


def _load_export(folder: pathlib.Path) -> Bundle:
  from safetensors.numpy import load_file
  meta = json.loads((folder / META_FILE).read_text())
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{folder} is export format {meta.get('format_version')}; this "
                     f"version of diffusion_jax reads format {FORMAT_VERSION}")
  config = ml_collections.ConfigDict(json.loads((folder / CONFIG_FILE).read_text()))
  info = DatasetInfo(**meta["data_info"])
  task = tasks.make_task(config, info)
  flat = load_file(str(folder / PARAMS_FILE))
  params = flax.traverse_util.unflatten_dict({tuple(k.split("/")): jnp.asarray(v)
                                              for k, v in flat.items()})
  expected = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
  got = {k: v.shape for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}
  want = {k: v.shape for k, v in flax.traverse_util.flatten_dict(expected, sep="/").items()}
  for name in sorted(set(got) | set(want)):
    if got.get(name) != want.get(name):
      raise ValueError(f"{folder / PARAMS_FILE}: {name} has shape {got.get(name)} but the "
                       f"config builds {want.get(name)}")
  return Bundle(config, params, task, info, meta["step"], meta.get("ema_rate"))


def load(path: str | pathlib.Path, ema_rate: Optional[float] = None) -> Bundle:
  """A `Bundle` from an export folder or a training workdir.

  Args:
    path: a folder written by `export_model` (or `--mode=export`), or a
      training workdir with checkpoints.
    ema_rate: which EMA of a workdir to take (default: the first kept).
  """
  path = pathlib.Path(path)
  if (path / PARAMS_FILE).exists():
    return _load_export(path)
  if (path / "checkpoints").is_dir():
    return _load_workdir(path, ema_rate)
  raise FileNotFoundError(f"{path} is neither an export ({PARAMS_FILE}, {CONFIG_FILE}) "
                          "nor a training workdir (checkpoints/)")


def export_model(workdir: str | pathlib.Path, output: str | pathlib.Path,
                 ema_rate: Optional[float] = None) -> pathlib.Path:
  """Writes the latest checkpoint's EMA params and config as a portable folder."""
  from safetensors.numpy import save_file
  bundle = _load_workdir(pathlib.Path(workdir), ema_rate)
  output = pathlib.Path(output)
  output.mkdir(parents=True, exist_ok=True)
  save_file(_flatten_params(bundle.params), str(output / PARAMS_FILE))
  (output / CONFIG_FILE).write_text(bundle.config.to_json(indent=2))
  (output / META_FILE).write_text(json.dumps({
      "format_version": FORMAT_VERSION, "step": bundle.step, "ema_rate": bundle.ema_rate,
      "data_info": dataclasses.asdict(bundle.info), "task": bundle.task.kind}, indent=2))
  return output


def load_train_state(workdir: str | pathlib.Path, step: Optional[int] = None):
  """(TrainState, config, meta) of a workdir's checkpoint (default: the latest
  readable one), restored on one device."""
  from diffusion_jax.training import checkpoint as ckpt_lib
  checkpointer = ckpt_lib.Checkpointer(str(pathlib.Path(workdir) / "checkpoints"))
  try:
    config_dict, meta = checkpointer.restore_json(step)
    config = ml_collections.ConfigDict(config_dict)
    task = tasks.make_task(config, DatasetInfo(**meta["data_info"]))
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    abstract = jax.eval_shape(lambda: state_lib.init_state(
        task.init_params, task.optimizer, config.train.ema_rates, config.seed))
    target = state_lib.abstract_with_shardings(abstract,
                                               state_lib.state_shardings(mesh, abstract))
    state, _, meta, _ = checkpointer.restore(target, step)
  finally:
    checkpointer.close()
  return state, config, meta
