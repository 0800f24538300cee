"""The training loop: data, state, compiled step, logs, sample grids, checkpoints."""
from __future__ import annotations

import json
import math
import pathlib
import time

import jax
import numpy as np
import tqdm
from absl import logging

from diffusion_jax import generate, parallel
from diffusion_jax.data import builders
from diffusion_jax.data.pipeline import ImageData
from diffusion_jax.training import checkpoint as ckpt_lib
from diffusion_jax.training import filtering
from diffusion_jax.training import metrics as metrics_lib
from diffusion_jax.training import state as state_lib
from diffusion_jax.training import tasks


def load_data(config, mesh=None) -> ImageData:
  """The training data, filtered by attributes and, if asked, by a classifier."""
  factory = (filtering.classifier_drop_fn_factory(config.data.filter, mesh)
             if mesh is not None else None)
  return ImageData(config.data, seed=config.seed, global_batch_size=config.data.batch_size,
                   drop_fn_factory=factory)


def restore_or_init(task, config, mesh, checkpointer):
  """(state, shardings, start step): the latest checkpoint's state or a new one."""
  state, shardings = state_lib.create_train_state(
      task.init_params, task.optimizer, config.train.ema_rates, config.seed, mesh)
  step = checkpointer.latest_step()
  if step is None:
    return state, shardings, 0
  abstract = state_lib.abstract_with_shardings(jax.eval_shape(lambda s: s, state), shardings)
  restored, _ = checkpointer.restore(abstract, step)
  logging.info("resumed from the checkpoint at step %d", step)
  return restored, shardings, step


def compile_step(task, mesh, shardings):
  batch = parallel.batch_sharding(mesh)
  return jax.jit(task.train_step, in_shardings=(shardings, batch),
                 out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=0)


def ema_params_for_sampling(state, config):
  key = state_lib.ema_key(config.sample.ema_rate)
  if config.sample.use_ema:
    if key not in state.ema_params:
      raise ValueError(f"sample.ema_rate {config.sample.ema_rate} is not one of "
                       f"train.ema_rates {tuple(config.train.ema_rates)}")
    return state.ema_params[key]
  return state.params


def write_grid(task, state, config, step, workdir, writer):
  labels = generate.class_grid_labels(task.num_classes, config.sample.per_class,
                                      config.sample.labels or None)
  params = ema_params_for_sampling(state, config)
  rng = jax.random.PRNGKey(config.sample.seed)
  images = generate.sample_grid(task, params, config.sample, rng, labels)
  titles = builders.label_names(config.data.name, labels[:, 0]) if task.num_classes else None
  path = generate.write_samples(images, labels, pathlib.Path(workdir) / "samples" /
                                f"step_{step:06d}", titles)
  writer.write_image(step, "samples", np.asarray(_read_png(path)))
  logging.info("wrote %s", path)
  return path


def _read_png(path):
  from PIL import Image
  return Image.open(path).convert("RGB")


class _Progress:
  """A tqdm bar (process 0) with steps/s, loss and ETA."""

  def __init__(self, start, total):
    self.bar = tqdm.tqdm(initial=start, total=total, unit="step", desc="training",
                         disable=jax.process_index() != 0, dynamic_ncols=True)

  def update(self, metrics=None):
    self.bar.update(1)
    if metrics:
      self.bar.set_postfix({k: f"{float(v):.4g}" for k, v in metrics.items()
                            if k in ("loss", "accuracy")})

  def close(self):
    self.bar.close()


def _check_finite(step, metrics):
  if not all(math.isfinite(float(v)) for v in metrics.values()):
    raise FloatingPointError(f"non-finite metrics at step {step}: {metrics}")


def train_and_evaluate(config, workdir: str):
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Returns:
    The final `TrainState`.
  """
  workdir = pathlib.Path(workdir)
  mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
  parallel.check_batch_size(config.data.batch_size, mesh)
  data = load_data(config, mesh)
  task = tasks.make_task(config, data.info)
  checkpointer = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), config.train.keep_checkpoints)
  state, shardings, start = restore_or_init(task, config, mesh, checkpointer)
  train_step = compile_step(task, mesh, shardings)
  writer = metrics_lib.MetricWriter(workdir / "tensorboard")
  if start == 0:
    writer.write_hparams(metrics_lib.flatten_config(config))
    writer.write_scalars(0, {"num_params": state_lib.count_params(state.params)})
  total = config.train.num_steps
  progress = _Progress(start, total)
  batches = data.batches(start)
  last_log = time.perf_counter()
  for step in range(start + 1, total + 1):
    state, metrics = train_step(state, parallel.global_batch(next(batches), mesh))
    if step % config.train.log_every == 0 or step == total:
      metrics = jax.device_get(metrics)
      _check_finite(step, metrics)
      now = time.perf_counter()
      metrics["steps_per_s"] = config.train.log_every / max(now - last_log, 1e-9)
      last_log = now
      writer.write_scalars(step, metrics)
      progress.update(metrics)
    else:
      progress.update()
    if config.train.checkpoint_every and step % config.train.checkpoint_every == 0:
      checkpointer.save(step, state, json.loads(config.to_json()))
    if (task.kind == "diffusion" and config.train.sample_every
        and step % config.train.sample_every == 0 and step != total):
      write_grid(task, state, config, step, workdir, writer)
  progress.close()
  if checkpointer.latest_step() != total:
    checkpointer.save(total, state, json.loads(config.to_json()))
  checkpointer.wait()
  if task.kind == "diffusion" and total > start:
    write_grid(task, state, config, total, workdir, writer)
  checkpointer.close()
  writer.close()
  return state


def sample_from_workdir(config, workdir: str) -> pathlib.Path:
  """Sample mode: restores the latest checkpoint and writes a grid (PNG + .npz)."""
  workdir = pathlib.Path(workdir)
  mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
  data = load_data(config)
  task = tasks.make_task(config, data.info)
  if task.kind != "diffusion":
    raise ValueError("sample mode needs a diffusion model (this config trains a classifier)")
  checkpointer = ckpt_lib.Checkpointer(str(workdir / "checkpoints"))
  if checkpointer.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}: train first "
                            "(--mode=train with the same --workdir)")
  state, _, step = restore_or_init(task, config, mesh, checkpointer)
  labels = generate.class_grid_labels(task.num_classes, config.sample.per_class,
                                      config.sample.labels or None)
  images = generate.sample_grid(task, ema_params_for_sampling(state, config), config.sample,
                                jax.random.PRNGKey(config.sample.seed), labels)
  titles = builders.label_names(config.data.name, labels[:, 0]) if task.num_classes else None
  output = pathlib.Path(config.sample.output or workdir / "samples" / f"sampled_{step:06d}")
  path = generate.write_samples(images, labels, output, titles)
  checkpointer.close()
  return path
