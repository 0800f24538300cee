"""The training loop: data, state, compiled step, logs, sample grids, checkpoints.

A run lives in its workdir and resumes from the latest complete checkpoint
there. It saves every `train.checkpoint_every` steps, at the end, and on
SIGTERM (then exits with `run_guard.EXIT_PREEMPTED`); it skips steps with
non-finite values and stops after `train.max_nonfinite_steps` in a row. A
new run may start from a trained model's weights (`train.init_from`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import sys
import time
from typing import Callable, Optional

import jax
import numpy as np
import tqdm
from absl import logging

from diffusion_jax import checkpoint as ckpt_lib
from diffusion_jax import config_lib, parallel
from diffusion_jax.data import pipeline
from diffusion_jax.inference import loading, outputs, sample_mode
from diffusion_jax.inference.sampler import Sampler, SampleSettings
from diffusion_jax.training import metrics as metrics_lib
from diffusion_jax.training import run_guard, tasks, workdir_lock
from diffusion_jax.training import state as state_lib


def make_checkpointer(config, workdir) -> ckpt_lib.Checkpointer:
  return ckpt_lib.Checkpointer(str(pathlib.Path(workdir) / "checkpoints"),
                               config.train.keep_checkpoints, config.train.keep_every)


def config_json(config) -> dict:
  return json.loads(config.to_json())


def initial_params(task: tasks.TrainTask, config, info: pipeline.DatasetInfo):
  """The weights `train.init_from` names (checked against the model), or None."""
  source = config.train.init_from
  if not source:
    return None
  bundle = loading.load(source, kind=task.spec.kind)
  if bundle.spec.num_classes != task.spec.num_classes:
    raise ValueError(f"train.init_from: {source} was trained on {bundle.spec.num_classes} "
                     f"classes but {config.data.name!r} has {info.num_classes}")
  params = loading.widen_input(bundle.params, task.spec)
  loading.check_params(params, task.spec, f"train.init_from {source}")
  logging.info("starting from %s (%s)", source, bundle)
  return params


def restore_or_init(task: tasks.TrainTask, config, mesh, checkpointer, info, workdir="."):
  """(state, shardings, start step): the latest checkpoint's state or a new one."""
  if checkpointer.latest_step() is None:
    state, shardings = task.create_state(mesh, config.seed, initial_params(task, config, info))
    return state, shardings, 0
  run_guard.check_same_run(checkpointer.restore_json()[0], config_json(config), str(workdir),
                           config_json(config_lib.base_config()))
  abstract, shardings = task.abstract_state(mesh, config.seed)
  restored, _, _, step = checkpointer.restore(abstract)
  logging.info("resumed from the checkpoint at step %d", step)
  return restored, shardings, step


def set_aside_old_run(config, workdir: pathlib.Path) -> None:
  """With resume=False, moves an existing run's checkpoints out of the way."""
  checkpoints = workdir / "checkpoints"
  if not config.resume and checkpoints.exists() and any(checkpoints.iterdir()):
    aside = workdir / f"checkpoints.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    checkpoints.rename(aside)
    logging.warning("resume=False: moved the earlier run's checkpoints to %s", aside)


def check_config(config, task: tasks.TrainTask) -> Optional[SampleSettings]:
  """What needs the data and the model, checked before any training: the
  network builds for the data (traced, not run), and the sampling of the
  grids (settings, labels, EMA rate). Returns the sample settings."""
  jax.eval_shape(task.spec.init_params, jax.random.PRNGKey(0))
  if not task.spec.samples:
    return None
  settings = sample_mode.check_sample_config(config.sample, task.spec)
  if task.spec.low_res_size:
    logging.info("no sample grids in training: an upsampler needs low-res images "
                 "(--mode=sample --config.sample.base_samples=...)")
    return None
  return settings


class _Progress:
  """A tqdm bar (process 0) with steps/s, loss and ETA; redrawn at most every
  `LOG_INTERVAL_S` where stderr is not a terminal (a log file, a notebook),
  whose every redraw is kept."""

  LOG_INTERVAL_S = 15.0

  def __init__(self, start, total):
    interval = 0.1 if sys.stderr.isatty() else self.LOG_INTERVAL_S
    self.bar = tqdm.tqdm(initial=start, total=total, unit="step", desc="training",
                         disable=jax.process_index() != 0, dynamic_ncols=True,
                         mininterval=interval)

  def update(self, metrics=None):
    self.bar.update(1)
    if metrics:
      self.bar.set_postfix({k: f"{float(v):.4g}" for k, v in metrics.items()
                            if k in ("loss", "accuracy", "nonfinite_total")}, refresh=False)

  def close(self):
    self.bar.close()


class _Run:
  """The pieces of one training run, built from the config and the workdir."""

  def __init__(self, config, workdir, drop_fn=None):
    config_lib.check(config)
    self.config, self.workdir = config, pathlib.Path(workdir)
    # One writer per workdir, from before anything is written until close().
    self.lock = workdir_lock.lock_workdir(self.workdir, config.train.lock_renew_every,
                                          config.train.lock_stale_after)
    try:
      self._build(config, drop_fn)
    except BaseException:
      self.lock.release()
      raise

  def _build(self, config, drop_fn):
    self.mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    parallel.check_batch_size(config.data.batch_size, self.mesh)
    info = pipeline.read_info(config.data)
    self.task = tasks.make_task(config, info)
    self.settings = check_config(config, self.task)
    self.data = pipeline.ImageData(config.data, seed=config.seed,
                                   global_batch_size=config.data.batch_size,
                                   example_fn=self.task.spec.example_fn, drop_fn=drop_fn)
    set_aside_old_run(config, self.workdir)
    self.checkpointer = make_checkpointer(config, self.workdir)
    self.state, shardings, self.start = restore_or_init(
        self.task, config, self.mesh, self.checkpointer, info, self.workdir)
    self.train_step = tasks.compile_step(self.task, self.mesh, shardings)
    self.writer = metrics_lib.MetricWriter(self.workdir / "tensorboard")
    self.meta = {"data_info": dataclasses.asdict(self.data.info), "task": self.task.spec.kind}
    self.sampler = Sampler(self.task.spec, self.mesh) if self.settings else None

  @contextlib.contextmanager
  def logs_written(self, folder=None):
    """A failed write of logs or grids (a full disk) as the run's one-line
    `checkpoint.SaveError`, saying which checkpoint is intact."""
    try:
      yield
    except OSError as e:
      folder = folder or self.writer.logdir
      raise self.checkpointer.io_error(e, f"could not write in {folder}") from e

  def save(self, step):
    self.lock.check()  # never write after another run took the workdir over
    self.checkpointer.save(step, self.state, config_json(self.config), self.meta)

  def log(self, step, metrics, seconds):
    metrics = jax.device_get(metrics)
    metrics["steps_per_s"] = self.config.train.log_every / max(seconds, 1e-9)
    with self.logs_written():
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
    """Samples a grid from the weights `sample.ema_rate` names (PNG + .npz)."""
    if self.sampler is None:
      return None
    sample = self.config.sample
    field = loading.weights_field(self.config, loading.ema_choice(sample))
    params = state_lib.weights(self.state, field)
    labels, prompts = outputs.grid_layout(self.task.spec, sample)
    images = outputs.sample_grid(self.sampler, params, self.settings, sample.seed, labels,
                                 prompts=prompts)
    if jax.process_index() != 0:
      return None
    titles = prompts or sample_mode.row_titles(self.config.data, self.task.spec.num_classes,
                                               labels, self.data.info.image_size)
    from PIL import Image
    with self.logs_written(self.workdir / "samples"):
      path = outputs.write_grid(images, labels, self.workdir / "samples" / f"step_{step:06d}",
                                titles, prompts)
    with self.logs_written():
      self.writer.write_image(step, "samples", np.asarray(Image.open(path).convert("RGB")))
    logging.info("wrote %s", path)
    return path

  def close(self, failed: bool = False):
    """Waits for the last save and closes the writers, then frees the
    workdir. After a failure (`failed`), their own errors are logged, not
    raised, so that the first error is the one reported."""
    try:
      for closer in (self.checkpointer.close, self.writer.close):
        try:
          closer()
        except Exception as e:  # noqa: BLE001
          if not failed:
            raise
          logging.warning("while stopping after an error: %s", str(e).splitlines()[0])
    finally:
      self.lock.release()


def _call(hook, step: int, value) -> None:
  """A caller's hook, on process 0, when there is something to pass."""
  if hook is not None and value is not None and jax.process_index() == 0:
    hook(step, value)


def train_and_evaluate(config, workdir: str,
                       drop_fn: Optional[Callable[[list], np.ndarray]] = None,
                       on_log: Optional[Callable[[int, dict], None]] = None,
                       on_grid: Optional[Callable[[int, pathlib.Path], None]] = None):
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Args:
    config: the run's config (checked before any training).
    workdir: where checkpoints, logs and sample grids go.
    drop_fn: flags training examples to leave out (e.g.
      `filtering.classifier_drop_fn`), or None.
    on_log: called with (step, metrics as floats) every `train.log_every`
      steps (a notebook's live loss curve); process 0 only.
    on_grid: called with (step, PNG path) after each sample grid; process 0 only.

  Returns:
    The final `TrainState`.

  Raises:
    run_guard.Preempted: after saving, on SIGTERM.
    run_guard.NonFiniteError: after `train.max_nonfinite_steps` bad steps in a row.
  """
  run = _Run(config, workdir, drop_fn)
  train = config.train
  if run.start == 0:
    with run.logs_written():
      run.writer.write_hparams(metrics_lib.flatten_config(config))
      run.writer.write_scalars(0, {"num_params": state_lib.count_params(run.state.params)})
  progress, watcher = _Progress(run.start, train.num_steps), run_guard.PreemptionWatcher()
  batches, last_log = run.data.batches(run.start), time.perf_counter()
  failed = True
  try:
    for step in range(run.start + 1, train.num_steps + 1):
      run.state, metrics = run.train_step(run.state,
                                          parallel.global_batch(next(batches), run.mesh))
      if step % train.log_every == 0 or step == train.num_steps:
        now = time.perf_counter()
        logged = run.log(step, metrics, now - last_log)
        progress.update(logged)
        _call(on_log, step, {k: float(v) for k, v in logged.items()})
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
        _call(on_grid, step, run.grid(step))
    if run.checkpointer.latest_step() != train.num_steps:
      run.save(train.num_steps)
    run.checkpointer.wait()
    if train.num_steps > run.start:
      _call(on_grid, train.num_steps, run.grid(train.num_steps))
    failed = False
    return run.state
  finally:
    progress.close()
    watcher.close()
    run.close(failed)
