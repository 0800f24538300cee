"""Pure train steps `(state, batch) -> (state, metrics)`, one per model kind.

`batch` holds global arrays: "image" [B, H, W, C] float32 in [-1, 1] and
what the model spec's `example_fn` adds: its conditioning inputs under their
model keys (a class-conditional denoiser's "y" [B] int32) and its targets
(the classifier's "label" [B] int32). Each step draws its randomness
from fold_in(state.rng, state.step), so a step is a pure function of the
state and the batch (exact resume, same result on any mesh).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_jax import diffusion
from diffusion_jax.inference.loading import sigma_rel_of_key
from diffusion_jax.inference.spec import ModelSpec
from diffusion_jax.models import clip as clip_lib
from diffusion_jax.training.state import TrainState

TIMESTEP_SAMPLERS = ("uniform", "loss_second_moment", "log_normal")


class Recipe(NamedTuple):
  """The denoising loss's recipe options (`config.diffusion`): the loss
  weighting (`diffusion.loss_weight`) and the log-normal timestep
  distribution's mean and std (`diffusion.log_normal_probabilities`)."""
  loss_weighting: str = "none"
  snr_gamma: float = 5.0
  sigma_data: float = 0.5
  log_normal_mean: float = -1.2
  log_normal_std: float = 1.2


DEFAULT_RECIPE = Recipe()


def ema_decay(rate: float, step: jax.Array, warmup: bool) -> jax.Array:
  """rate, or min(rate, (1 + step) / (10 + step)) with warm-up, so that a
  short run's average is not dominated by the random initialisation."""
  if not warmup:
    return jnp.asarray(rate, jnp.float32)
  step = step.astype(jnp.float32)
  return jnp.minimum(rate, (1.0 + step) / (10.0 + step))


def power_ema_exponent(sigma_rel: float) -> float:
  """EDM2's gamma for a relative width sigma_rel: the real root of
  sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)), i.e. of
  gamma^3 + 7 gamma^2 + (16 - 1 / sigma_rel^2) gamma + 12 - 1 / sigma_rel^2."""
  inv = 1.0 / sigma_rel ** 2
  roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
  return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def power_ema_weight(gamma: float, step: jax.Array) -> jax.Array:
  """1 - (1 - 1 / n)^(gamma + 1), the weight of the n = step + 1-th update
  (EDM2, eq. 3): the average after n updates weighs update k by
  k^(gamma+1) - (k-1)^(gamma+1). Computed as -expm1((gamma + 1) log1p(-1/n)):
  as 1 minus a float32 decay it lost 1% of itself by a million steps."""
  n = step.astype(jnp.float32) + 1.0
  return -jnp.expm1((gamma + 1.0) * jnp.log1p(-1.0 / n))


def update_ema(ema_params: dict, params, step, warmup: bool) -> dict:
  """Every EMA one update on: keys of rates (`ema_decay`) and of power EMAs
  (`inference.loading.power_ema_key`, `power_ema_weight`)."""
  def update(key, average):
    sigma_rel = sigma_rel_of_key(key)
    if sigma_rel is None:
      decay = ema_decay(float(key), step, warmup)
      return jax.tree.map(lambda a, p: decay * a + (1 - decay) * p, average, params)
    weight = power_ema_weight(power_ema_exponent(sigma_rel), step)
    return jax.tree.map(lambda a, p: a + weight * (p - a), average, params)
  return {key: update(key, average) for key, average in ema_params.items()}


def apply_gradients(state: TrainState, grads, optimizer, ema_warmup: bool):
  """The optimizer update and the EMA, as a new state (step advanced)."""
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = update_ema(state.ema_params, params, state.step, ema_warmup)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       ema_params=ema)


def make_diffusion_step(spec: ModelSpec, optimizer: optax.GradientTransformation, *,
                        vlb_weight: float = 0.001, cond_dropout: float = 0.0,
                        timestep_sampler: str = "uniform",
                        ema_warmup: bool = True, recipe: Recipe = DEFAULT_RECIPE) -> Callable:
  """The denoising train step (L_simple, or the hybrid loss with a learned
  variance), its MSE weighted as `recipe.loss_weighting` says.

  Args:
    spec: the denoiser: network, schedule, parameterization, variance and
      conditioning inputs (each read from the batch under its model keys).
    optimizer: the optax transformation the state was built with.
    vlb_weight: lambda of the hybrid loss (`diffusion.training_losses`).
    cond_dropout: probability of replacing each conditioning input by its
      null value (classifier-free guidance).
    timestep_sampler: "uniform", "loss_second_moment" (importance
      sampling by the loss history kept in `state.loss_history`) or
      "log_normal" (EDM's ln sigma ~ N(recipe.log_normal_mean,
      recipe.log_normal_std^2), part of the objective: weights 1).
    ema_warmup: see `ema_decay`.
  """
  diffusion.check_choice("diffusion.timestep_sampler", timestep_sampler, TIMESTEP_SAMPLERS)
  schedule = spec.schedule
  probabilities = None  # [T] a fixed distribution of t, or None
  if timestep_sampler == "log_normal":
    probabilities = jnp.asarray(diffusion.log_normal_probabilities(
        schedule, recipe.log_normal_mean, recipe.log_normal_std))

  def loss_fn(params, batch, rng, history):
    x0 = batch["image"]
    t_rng, noise_rng, cond_rng, dropout_rng = jax.random.split(rng, 4)
    t, weights = diffusion.sample_timesteps(t_rng, x0.shape[0], schedule.num_timesteps,
                                            history, probabilities=probabilities)
    noise = jax.random.normal(noise_rng, x0.shape, jnp.float32)
    x_t = diffusion.q_sample(schedule, x0, t, noise)
    cond = spec.training_cond(batch, cond_rng, cond_dropout)
    output = spec.apply(params, x_t, t, rngs={"dropout": dropout_rng}, train=True, **cond)
    mse_weight = diffusion.loss_weight(schedule, t, spec.parameterization,
                                       recipe.loss_weighting, recipe.snr_gamma,
                                       recipe.sigma_data)
    losses = diffusion.training_losses(schedule, output, x0, t, noise,
                                       parameterization=spec.parameterization,
                                       variance=spec.variance, vlb_weight=vlb_weight,
                                       mse_weight=mse_weight)
    loss = jnp.mean(losses["loss"] * weights)
    metrics = {"loss": loss, "mse": jnp.mean(losses["mse"]), "vb": jnp.mean(losses["vb"])}
    return loss, (metrics, t, losses["loss"])

  return _make_step(loss_fn, optimizer, ema_warmup)


def make_classifier_step(spec: ModelSpec, optimizer: optax.GradientTransformation, *,
                         ema_warmup: bool = True) -> Callable:
  """The noisy-classifier train step: cross-entropy on q_sample(x_0, t), t uniform.

  The classifier must be trained with the schedule of the model it guides.
  """
  schedule = spec.schedule

  def loss_fn(params, batch, rng, history):
    del history
    x0, labels = batch["image"], batch["label"]
    t_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
    t, _ = diffusion.sample_timesteps(t_rng, x0.shape[0], schedule.num_timesteps)
    x_t = diffusion.q_sample(schedule, x0, t,
                             jax.random.normal(noise_rng, x0.shape, jnp.float32))
    logits = spec.apply(params, x_t, t, rngs={"dropout": dropout_rng}, train=True)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    loss = jnp.mean(losses)
    return loss, ({"loss": loss, "accuracy": accuracy}, t, losses)

  return _make_step(loss_fn, optimizer, ema_warmup)


def make_evaluator_step(spec: ModelSpec, optimizer: optax.GradientTransformation, *,
                        ema_warmup: bool = True) -> Callable:
  """The clean-image evaluator's step: the sum over attributes of each
  head's cross-entropy, on clean images (no noise)."""
  names = [name for name, _ in spec.model.attributes]

  def loss_fn(params, batch, rng, history):
    del history
    x0 = batch["image"]
    out = spec.apply(params, x0, None, rngs={"dropout": rng}, train=True)
    per_example = sum(optax.softmax_cross_entropy_with_integer_labels(out[n], batch[n])
                      for n in names)  # [B]
    loss = jnp.mean(per_example)
    metrics = {"loss": loss}
    metrics.update({f"accuracy_{n}": jnp.mean(jnp.argmax(out[n], -1) == batch[n])
                    for n in names})
    return loss, (metrics, jnp.zeros(x0.shape[:1], jnp.int32), per_example)

  return _make_step(loss_fn, optimizer, ema_warmup)


def make_clip_step(spec: ModelSpec, optimizer: optax.GradientTransformation, *,
                   ema_warmup: bool = True) -> Callable:
  """The noised CLIP's contrastive step: x_t = q_sample(x_0, t), t uniform,
  against the batch's captions.

  Logits are exp(logit_scale) (fixed at 100, the scale guidance uses) times
  the cosine similarities. Captions repeat in a batch (many scenes share
  one), so every image whose caption is the same is a positive: each row's
  target spreads evenly over its matches, in both directions.
  """
  schedule = spec.schedule

  def loss_fn(params, batch, rng, history):
    del history
    x0, tokens = batch["image"], batch["clip_tokens"]
    t_rng, noise_rng = jax.random.split(rng)
    t, _ = diffusion.sample_timesteps(t_rng, x0.shape[0], schedule.num_timesteps)
    x_t = diffusion.q_sample(schedule, x0, t,
                             jax.random.normal(noise_rng, x0.shape, jnp.float32))
    z_image, z_text = spec.apply(params, x_t, t, clip_tokens=tokens,
                                 clip_lens=batch["clip_lens"])
    logits = jnp.exp(clip_lib.LOGIT_SCALE) * (
        clip_lib.normalize(z_image) @ clip_lib.normalize(z_text).T)  # [B, B]
    same = jnp.all(tokens[:, None] == tokens[None], axis=-1).astype(jnp.float32)
    targets = same / jnp.sum(same, axis=-1, keepdims=True)  # symmetric matches
    losses = 0.5 * (optax.softmax_cross_entropy(logits, targets)
                    + optax.softmax_cross_entropy(logits.T, targets))
    hit = jnp.take_along_axis(same, jnp.argmax(logits, -1)[:, None], axis=-1)[:, 0]
    loss = jnp.mean(losses)
    return loss, ({"loss": loss, "accuracy": jnp.mean(hit)}, t, losses)

  return _make_step(loss_fn, optimizer, ema_warmup)


def guard_nonfinite(state: TrainState, updated: TrainState, finite) -> TrainState:
  """`updated` if the step was finite; else `state` with only the step advanced
  (params, optimizer state and EMA untouched) and the skip counted.

  One `lax.cond` over the whole state, not a `where` per array: the quick
  model's train step has ~590 state arrays, and it compiles in 5.2 s instead
  of 5.7 (benchmarks/compile_time.py)."""
  kept = jax.lax.cond(finite, lambda: updated, lambda: state)
  streak = jnp.where(finite, 0, state.nonfinite_streak + 1)
  return kept.replace(step=state.step + 1, nonfinite_streak=streak,
                      nonfinite_total=state.nonfinite_total + (1 - finite.astype(jnp.int32)))


def _make_step(loss_fn, optimizer, ema_warmup):
  """`loss_fn(params, batch, rng, history) -> (loss, (metrics, t, per-example
  losses))` as a train step that also keeps the loss history, if any."""
  def train_step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(state.rng, state.step)
    (loss, (metrics, t, losses)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, rng, state.loss_history)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updated = apply_gradients(state, grads, optimizer, ema_warmup)
    if state.loss_history is not None:
      updated = updated.replace(loss_history=diffusion.update_loss_history(
          state.loss_history, t, jax.lax.stop_gradient(losses)))
    new_state = guard_nonfinite(state, updated, finite)
    metrics.update(grad_norm=grad_norm, skipped=1 - finite.astype(jnp.int32),
                   nonfinite_total=new_state.nonfinite_total,
                   nonfinite_streak=new_state.nonfinite_streak)
    return new_state, metrics
  return train_step
