"""The training loop: data, state, compiled step, logs, sample grids, checkpoints.

A run lives in its workdir and resumes from the latest complete checkpoint
there. It saves every `train.checkpoint_every` steps, at the end, and on
SIGTERM (then exits with `run_guard.EXIT_PREEMPTED`); it skips steps with
non-finite values and stops after `train.max_nonfinite_steps` in a row.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging

from diffusion_jax import generate, parallel, platform
from diffusion_jax.data import builders
from diffusion_jax.data.pipeline import ImageData
from diffusion_jax.training import checkpoint as ckpt_lib
from diffusion_jax.training import filtering, run_guard
from diffusion_jax.training import metrics as metrics_lib
from diffusion_jax.training import state as state_lib
from diffusion_jax.training import tasks


def load_data(config, mesh=None) -> ImageData:
  """The training data, filtered by attributes and, if asked, by a classifier."""
  factory = (filtering.classifier_drop_fn_factory(config.data.filter, mesh)
             if mesh is not None else None)
  return ImageData(config.data, seed=config.seed, global_batch_size=config.data.batch_size,
                   drop_fn_factory=factory)


def make_checkpointer(config, workdir) -> ckpt_lib.Checkpointer:
  return ckpt_lib.Checkpointer(str(pathlib.Path(workdir) / "checkpoints"),
                               config.train.keep_checkpoints, config.train.keep_every)


def config_json(config) -> dict:
  return json.loads(config.to_json())


def restore_or_init(task, config, mesh, checkpointer, workdir="."):
  """(state, shardings, start step): the latest checkpoint's state or a new one."""
  state, shardings = state_lib.create_train_state(
      task.init_params, task.optimizer, config.train.ema_rates, config.seed, mesh)
  if checkpointer.latest_step() is None:
    return state, shardings, 0
  abstract = state_lib.abstract_with_shardings(jax.eval_shape(lambda s: s, state), shardings)
  restored, saved_config, _, step = checkpointer.restore(abstract)
  run_guard.check_same_run(saved_config, config_json(config), str(workdir))
  logging.info("resumed from the checkpoint at step %d", step)
  return restored, shardings, step


def set_aside_old_run(config, workdir: pathlib.Path) -> None:
  """With resume=False, moves an existing run's checkpoints out of the way."""
  checkpoints = workdir / "checkpoints"
  if not config.resume and checkpoints.exists() and any(checkpoints.iterdir()):
    aside = workdir / f"checkpoints.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    checkpoints.rename(aside)
    logging.warning("resume=False: moved the earlier run's checkpoints to %s", aside)


def compile_step(task, mesh, shardings):
  batch = parallel.batch_sharding(mesh)
  return jax.jit(task.train_step, in_shardings=(shardings, batch),
                 out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=0,
                 compiler_options=platform.compiler_options())


def ema_params_for_sampling(state, config):
  key = state_lib.ema_key(config.sample.ema_rate)
  if config.sample.use_ema:
    if key not in state.ema_params:
      raise ValueError(f"sample.ema_rate {config.sample.ema_rate} is not one of "
                       f"train.ema_rates {tuple(config.train.ema_rates)}")
    return state.ema_params[key]
  return state.params


def write_grid(task, params, config, path, writer=None, step=0):
  """Samples one row per class (or per `sample.labels`) and writes PNG + .npz."""
  labels = generate.class_grid_labels(task.num_classes, config.sample.per_class,
                                      config.sample.labels or None)
  images = generate.sample_grid(task, params, config.sample,
                                jax.random.PRNGKey(config.sample.seed), labels)
  titles = builders.label_names(config.data.name, labels[:, 0],
                                config.data.data_dir or None) if task.num_classes else None
  path = generate.write_samples(images, labels, pathlib.Path(path), titles)
  if writer is not None:
    from PIL import Image
    writer.write_image(step, "samples", np.asarray(Image.open(path).convert("RGB")))
  logging.info("wrote %s", path)
  return path


class _Progress:
  """A tqdm bar (process 0) with steps/s, loss and ETA."""

  def __init__(self, start, total):
    self.bar = tqdm.tqdm(initial=start, total=total, unit="step", desc="training",
                         disable=jax.process_index() != 0, dynamic_ncols=True)

  def update(self, metrics=None):
    self.bar.update(1)
    if metrics:
      self.bar.set_postfix({k: f"{float(v):.4g}" for k, v in metrics.items()
                            if k in ("loss", "accuracy", "nonfinite_total")})

  def close(self):
    self.bar.close()


class _Run:
  """The pieces of one training run, built from the config and the workdir."""

  def __init__(self, config, workdir):
    self.config, self.workdir = config, pathlib.Path(workdir)
    self.mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    parallel.check_batch_size(config.data.batch_size, self.mesh)
    self.data = load_data(config, self.mesh)
    self.task = tasks.make_task(config, self.data.info)
    set_aside_old_run(config, self.workdir)
    self.checkpointer = make_checkpointer(config, self.workdir)
    self.state, shardings, self.start = restore_or_init(
        self.task, config, self.mesh, self.checkpointer, self.workdir)
    self.train_step = compile_step(self.task, self.mesh, shardings)
    self.writer = metrics_lib.MetricWriter(self.workdir / "tensorboard")
    self.meta = {"data_info": dataclasses.asdict(self.data.info), "task": self.task.kind}

  def save(self, step):
    self.checkpointer.save(step, self.state, config_json(self.config), self.meta)

  def log(self, step, metrics, seconds):
    metrics = jax.device_get(metrics)
    metrics["steps_per_s"] = self.config.train.log_every / max(seconds, 1e-9)
    self.writer.write_scalars(step, metrics)
    if metrics.get("skipped"):
      logging.warning("step %d skipped: non-finite loss or gradient (%d so far)",
                      step, int(metrics["nonfinite_total"]))
    if int(metrics.get("nonfinite_streak", 0)) >= self.config.train.max_nonfinite_steps:
      good = self.checkpointer.latest_step()
      raise run_guard.NonFiniteError(
          f"stopping at step {step}: {int(metrics['nonfinite_streak'])} consecutive steps "
          f"had a non-finite loss or gradient (none of them changed the parameters); "
          f"the last checkpoint (step {good}) is intact")
    return metrics

  def grid(self, step):
    if self.task.kind == "diffusion":
      params = ema_params_for_sampling(self.state, self.config)
      write_grid(self.task, params, self.config,
                 self.workdir / "samples" / f"step_{step:06d}", self.writer, step)

  def close(self):
    self.checkpointer.close()
    self.writer.close()


def train_and_evaluate(config, workdir: str):
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Returns:
    The final `TrainState`.

  Raises:
    run_guard.Preempted: after saving, on SIGTERM.
    run_guard.NonFiniteError: after `train.max_nonfinite_steps` bad steps in a row.
  """
  run = _Run(config, workdir)
  train = config.train
  if run.start == 0:
    run.writer.write_hparams(metrics_lib.flatten_config(config))
    run.writer.write_scalars(0, {"num_params": state_lib.count_params(run.state.params)})
  progress, watcher = _Progress(run.start, train.num_steps), run_guard.PreemptionWatcher()
  batches, last_log = run.data.batches(run.start), time.perf_counter()
  try:
    for step in range(run.start + 1, train.num_steps + 1):
      run.state, metrics = run.train_step(run.state,
                                          parallel.global_batch(next(batches), run.mesh))
      if step % train.log_every == 0 or step == train.num_steps:
        now = time.perf_counter()
        progress.update(run.log(step, metrics, now - last_log))
        last_log = now
      else:
        progress.update()
      if train.checkpoint_every and step % train.checkpoint_every == 0:
        run.save(step)
      if watcher.should_stop(step):
        if run.checkpointer.latest_step() != step:
          run.save(step)
        run.checkpointer.wait()
        raise run_guard.Preempted(step)
      if train.sample_every and step % train.sample_every == 0 and step != train.num_steps:
        run.grid(step)
    if run.checkpointer.latest_step() != train.num_steps:
      run.save(train.num_steps)
    run.checkpointer.wait()
    if train.num_steps > run.start:
      run.grid(train.num_steps)
    return run.state
  finally:
    progress.close()
    watcher.close()
    run.close()


def sample_from_workdir(config, workdir: str) -> pathlib.Path:
  """Sample mode: restores the latest checkpoint and writes a grid (PNG + .npz)."""
  from diffusion_jax import export
  bundle = export.load(workdir)
  if bundle.task.kind != "diffusion":
    raise ValueError("sample mode needs a diffusion model (this workdir holds a classifier)")
  params = bundle.params
  output = config.sample.output or (pathlib.Path(workdir) / "samples" /
                                    f"sampled_{bundle.step:06d}")
  sample_config = ml_collections.ConfigDict(bundle.config.to_dict())
  sample_config.sample = config.sample  # the sampling settings asked for now
  return write_grid(bundle.task, params, sample_config, output)
