"""Bits per dimension over the whole chain: the variational bound that
Improved DDPM reports (its `calc_bpd_loop`).

-log p(x_0) <= L_prior + sum_{t=1}^{T-1} L_t + L_0, where L_prior is
KL(q(x_T | x_0) || N(0, I)), L_t the KL between the true and the model's
posteriors at t (each at its own x_t = q_sample(x_0, t), fresh noise) and L_0
the decoder's discretised negative log-likelihood of the 256-level data,
all per dimension and in bits (`diffusion.vlb_term`). Every t of the
training schedule is evaluated, so it costs T network calls per batch.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import diffusion, platform
from diffusion_jax.schedules import Schedule


def prior_bpd(sched: Schedule, x0: jax.Array) -> jax.Array:
  """KL(q(x_T | x_0) || N(0, I)) in bits per dimension: [B]."""
  t = jnp.full((x0.shape[0],), sched.num_timesteps - 1, jnp.int32)
  mean, _, log_var = diffusion.q_mean_variance(sched, x0, t)
  kl = diffusion.normal_kl(mean, log_var, 0.0, 0.0)
  return diffusion.mean_flat(kl) / np.log(2.0)


def noise_at(rng: jax.Array, t: int, shape) -> jax.Array:
  """The noise of term t: normal(fold_in(rng, t))."""
  return jax.random.normal(jax.random.fold_in(rng, t), shape, jnp.float32)


@functools.partial(platform.jit, static_argnames=("model_fn", "parameterization",
                                                  "variance"))
def _terms(sched, x0, rng, cond, *, model_fn, parameterization, variance):
  def term(carry, t_index):
    t = jnp.full((x0.shape[0],), t_index, jnp.int32)
    x_t = diffusion.q_sample(sched, x0, t, noise_at(rng, t_index, x0.shape))
    output = model_fn(x_t, t, **cond)
    out = diffusion.p_mean_variance(sched, output, x_t, t, parameterization=parameterization,
                                    variance=variance, clip_denoised=False)
    return carry, diffusion.vlb_term(sched, out, x0, x_t, t)
  _, terms = jax.lax.scan(term, None, jnp.arange(sched.num_timesteps))
  return terms.T  # [B, T]


def bits_per_dim(model_fn: Callable, sched: Schedule, x0: jax.Array, rng: jax.Array, *,
                 parameterization: str = "eps", variance: str = "fixed_small",
                 **cond) -> dict[str, jax.Array]:
  """The bound for each image of x0 (256-level data in [-1, 1]).

  Args:
    model_fn: `model_fn(x_t, t, **cond)` at the training schedule's t.
    sched: the training schedule (every t is evaluated).
    x0: [B, ...] images, uint8 levels mapped to [-1, 1].
    rng: the noise of term t is `noise_at(rng, t, x0.shape)`.

  Returns:
    {"total": [B], "prior": [B], "terms": [B, T] (L_0 first)}, bits per dim.
  """
  x0 = jnp.asarray(x0, jnp.float32)
  terms = _terms(sched, x0, rng, cond, model_fn=model_fn,
                 parameterization=parameterization, variance=variance)
  prior = prior_bpd(sched, x0)
  return {"total": terms.sum(1) + prior, "prior": prior, "terms": terms}
