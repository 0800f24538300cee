"""What a config trains: the inference spec extended with an optimizer and a step."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import optax
from jax.sharding import Mesh

from diffusion_jax import parallel, platform
from diffusion_jax.data.info import DatasetInfo
from diffusion_jax.inference.loading import PowerEMA
from diffusion_jax.inference.spec import ModelSpec, make_spec
from diffusion_jax.training import optimizer as optim_lib
from diffusion_jax.training import state as state_lib
from diffusion_jax.training import steps


@dataclasses.dataclass(eq=False)
class TrainTask:
  """A model spec with what training adds: the optimizer and the pure step.

  Attributes:
    spec: the model (what inference needs).
    optimizer: the optax transformation.
    train_step: `(state, batch) -> (state, metrics)`, not yet compiled.
    ema_rates: the EMA rates the state keeps.
    loss_history_timesteps: T when the step samples timesteps by importance
      (the state then keeps a loss history), else None.
  """
  spec: ModelSpec
  optimizer: optax.GradientTransformation
  train_step: Callable
  ema_rates: tuple
  loss_history_timesteps: Optional[int] = None

  def create_state(self, mesh: Mesh, seed: int, params: Any = None):
    """(state, shardings): a fresh state on `mesh` (from `params` if given)."""
    if params is not None:
      params = parallel.replicate(params, mesh)
    return state_lib.create_train_state(
        self.spec.init_params, self.optimizer, self.ema_rates, seed, mesh, params,
        self.loss_history_timesteps)


  def abstract_state(self, mesh: Mesh, seed: int):
    """(the state's ShapeDtypeStructs with their shardings, shardings), for
    restoring a checkpoint without initialising anything."""
    def init():
      return state_lib.init_state(self.spec.init_params(jax.random.PRNGKey(seed)),
                                  self.optimizer, self.ema_rates, jax.random.PRNGKey(seed),
                                  self.loss_history_timesteps)
    abstract = jax.eval_shape(init)
    shardings = state_lib.state_shardings(mesh, abstract)
    return state_lib.abstract_with_shardings(abstract, shardings), shardings


def _diffusion_step(spec: ModelSpec, optimizer, config):
  """(step, loss-history T or None) of a denoiser."""
  d = config.diffusion
  sampler = d.timestep_sampler
  recipe = steps.Recipe(loss_weighting=d.loss_weighting, snr_gamma=d.snr_gamma,
                        sigma_data=d.sigma_data, log_normal_mean=d.log_normal_mean,
                        log_normal_std=d.log_normal_std)
  step = steps.make_diffusion_step(
      spec, optimizer, vlb_weight=d.vlb_weight,
      cond_dropout=config.train.label_dropout, timestep_sampler=sampler,
      ema_warmup=config.train.ema_warmup, recipe=recipe)
  return step, spec.schedule.num_timesteps if sampler == "loss_second_moment" else None


def _classifier_step(spec: ModelSpec, optimizer, config):
  return steps.make_classifier_step(spec, optimizer, ema_warmup=config.train.ema_warmup), None


def _evaluator_step(spec: ModelSpec, optimizer, config):
  return steps.make_evaluator_step(spec, optimizer, ema_warmup=config.train.ema_warmup), None


def _clip_step(spec: ModelSpec, optimizer, config):
  return steps.make_clip_step(spec, optimizer, ema_warmup=config.train.ema_warmup), None


# Model kind -> its train step builder (the kinds are `inference.spec.KINDS`).
STEP_BUILDERS = {"diffusion": _diffusion_step, "classifier": _classifier_step,
                 "evaluator": _evaluator_step, "clip": _clip_step}


def make_task(config, info: DatasetInfo) -> TrainTask:
  """The `TrainTask` of `config.task` for data described by `info`."""
  spec = make_spec(config, info)
  optimizer = optim_lib.make_optimizer(config.optim, config.train.num_steps)
  step, history = STEP_BUILDERS[spec.kind](spec, optimizer, config)
  return TrainTask(spec, optimizer, step, ema_names(config.train), history)


def ema_names(train_config) -> tuple:
  """The EMAs a run keeps: its rates, then its power EMAs (`PowerEMA`)."""
  return tuple(train_config.ema_rates) + tuple(
      PowerEMA(float(s)) for s in train_config.get("ema_sigma_rels", ()))


def compile_step(task: TrainTask, mesh: Mesh, shardings):
  """`task.train_step` jitted over `mesh`: the state in `shardings` (donated),
  the batch split over the data axes, the metrics replicated."""
  batch = parallel.batch_sharding(mesh)
  return jax.jit(task.train_step, in_shardings=(shardings, batch),
                 out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=0,
                 compiler_options=platform.compiler_options())
