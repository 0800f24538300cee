"""Pure train steps `(state, batch) -> (state, metrics)`, one per task.

`batch` holds global arrays: "image" [B, H, W, C] float32 in [-1, 1] and,
when the data has them, "label" [B] int32. Each step draws its randomness
from fold_in(state.rng, state.step), so a step is a pure function of the
state and the batch (exact resume, same result on any mesh).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from diffusion_jax import diffusion
from diffusion_jax.schedules import Schedule
from diffusion_jax.training.state import TrainState


def ema_decay(rate: float, step: jax.Array, warmup: bool) -> jax.Array:
  """rate, or min(rate, (1 + step) / (10 + step)) with warm-up, so that a
  short run's average is not dominated by the random initialisation."""
  if not warmup:
    return jnp.asarray(rate, jnp.float32)
  step = step.astype(jnp.float32)
  return jnp.minimum(rate, (1.0 + step) / (10.0 + step))


def update_ema(ema_params: dict, params, step, warmup: bool) -> dict:
  def update(key, average):
    decay = ema_decay(float(key), step, warmup)
    return jax.tree.map(lambda a, p: decay * a + (1 - decay) * p, average, params)
  return {key: update(key, average) for key, average in ema_params.items()}


def apply_gradients(state: TrainState, grads, optimizer, ema_warmup: bool):
  """The optimizer update and the EMA, as a new state (step advanced)."""
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = update_ema(state.ema_params, params, state.step, ema_warmup)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       ema_params=ema)


def drop_labels(rng, labels, prob: float, null_label: int):
  """Replaces each label by the null class with probability `prob` (CFG)."""
  if prob <= 0:
    return labels
  return jnp.where(jax.random.bernoulli(rng, prob, labels.shape), null_label, labels)


def make_diffusion_step(apply_fn: Callable, schedule: Schedule,
                        optimizer: optax.GradientTransformation, *,
                        parameterization: str = "eps", variance: str = "fixed_small",
                        vlb_weight: float = 0.001, class_conditional: bool = False,
                        label_dropout: float = 0.0, null_label: Optional[int] = None,
                        ema_warmup: bool = True) -> Callable:
  """The denoising train step (L_simple, or the hybrid loss with a learned variance).

  Args:
    apply_fn: `apply_fn(params, x_t, t, rngs=..., train=True, **cond)`.
    schedule: the training schedule.
    optimizer: the optax transformation the state was built with.
    parameterization, variance, vlb_weight: as in `diffusion.training_losses`.
    class_conditional: feed `batch["label"]` to the model as `y`.
    label_dropout: probability of replacing a label by `null_label` (CFG).
    ema_warmup: see `ema_decay`.
  """
  num_timesteps = schedule.num_timesteps

  def loss_fn(params, batch, rng):
    x0 = batch["image"]
    t_rng, noise_rng, label_rng, dropout_rng = jax.random.split(rng, 4)
    t, weights = diffusion.sample_timesteps(t_rng, x0.shape[0], num_timesteps)
    noise = jax.random.normal(noise_rng, x0.shape, jnp.float32)
    x_t = diffusion.q_sample(schedule, x0, t, noise)
    cond = {}
    if class_conditional:
      cond["y"] = drop_labels(label_rng, batch["label"], label_dropout, null_label)
    output = apply_fn(params, x_t, t, rngs={"dropout": dropout_rng}, train=True, **cond)
    losses = diffusion.training_losses(schedule, output, x0, t, noise,
                                       parameterization=parameterization,
                                       variance=variance, vlb_weight=vlb_weight)
    loss = jnp.mean(losses["loss"] * weights)
    return loss, {"loss": loss, "mse": jnp.mean(losses["mse"]), "vb": jnp.mean(losses["vb"])}

  return _make_step(loss_fn, optimizer, ema_warmup)


def make_classifier_step(apply_fn: Callable, schedule: Schedule,
                         optimizer: optax.GradientTransformation, *,
                         ema_warmup: bool = True) -> Callable:
  """The noisy-classifier train step: cross-entropy on q_sample(x_0, t), t uniform.

  The classifier must be trained with the schedule of the model it guides.
  """
  def loss_fn(params, batch, rng):
    x0, labels = batch["image"], batch["label"]
    t_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
    t, _ = diffusion.sample_timesteps(t_rng, x0.shape[0], schedule.num_timesteps)
    x_t = diffusion.q_sample(schedule, x0, t,
                             jax.random.normal(noise_rng, x0.shape, jnp.float32))
    logits = apply_fn(params, x_t, t, rngs={"dropout": dropout_rng}, train=True)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, {"loss": loss, "accuracy": accuracy}

  return _make_step(loss_fn, optimizer, ema_warmup)


def guard_nonfinite(state: TrainState, updated: TrainState, finite) -> TrainState:
  """`updated` if the step was finite; else `state` with only the step advanced
  (params, optimizer state and EMA untouched) and the skip counted."""
  kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
  streak = jnp.where(finite, 0, state.nonfinite_streak + 1)
  return kept.replace(step=state.step + 1, nonfinite_streak=streak,
                      nonfinite_total=state.nonfinite_total + (1 - finite.astype(jnp.int32)))


def _make_step(loss_fn, optimizer, ema_warmup):
  def train_step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(state.rng, state.step)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, rng)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updated = apply_gradients(state, grads, optimizer, ema_warmup)
    new_state = guard_nonfinite(state, updated, finite)
    metrics.update(grad_norm=grad_norm, skipped=1 - finite.astype(jnp.int32),
                   nonfinite_total=new_state.nonfinite_total,
                   nonfinite_streak=new_state.nonfinite_streak)
    return new_state, metrics
  return train_step
