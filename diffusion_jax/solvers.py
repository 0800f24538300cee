"""High-order solvers of the probability-flow ODE (and its SDE) on a
discrete schedule: DPM-Solver++ (Lu et al. 2022) multistep of orders 2 and
3, its SDE variant of order 2, and Heun's method (Karras et al. 2022).

A solver visits the respaced schedule's kept timesteps, largest first, and
ends at x_0. Step i goes from the level of index i (abar[i]) to the level
below it (abar_prev[i]; 1 at i = 0, where x_0 is the data prediction
itself). The multistep solvers carry the data predictions (x_0) of the last
steps and their log-SNRs in a `History`, inside the sampler's `lax.scan`.
Everything here is a pure function of arrays and a `Schedule`.

The data prediction a solver is given is the one the DDIM step uses: after
`denoised_fn`, clipping, and guidance's score shift. Clipping therefore
enters the history too (as diffusers' thresholding does): the multistep
extrapolation is over the clipped predictions.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffusion_jax import diffusion
from diffusion_jax.schedules import Schedule

MULTISTEP = {"dpmpp_2m": 2, "dpmpp_3m": 3, "dpmpp_2m_sde": 2}
# diffusers' lower_order_final: under this many steps the last steps use a
# lower order (the final step, to x_0, is first order always).
LOWER_ORDER_FINAL_BELOW = 15


class History(NamedTuple):
  """The last data predictions of a multistep solver and their log-SNRs."""
  x0: jax.Array  # [2, *shape]: the predictions at the previous two steps
  lam: jax.Array  # [2] float32: their half log-SNRs, lambda = log(alpha / sigma)
  count: jax.Array  # int32 []: how many steps were taken so far

  @classmethod
  def empty(cls, shape) -> History:
    return cls(jnp.zeros((2,) + tuple(shape), jnp.float32), jnp.zeros((2,), jnp.float32),
               jnp.zeros((), jnp.int32))

  def push(self, x0, lam) -> History:
    return History(jnp.stack([x0, self.x0[0]]), jnp.stack([lam, self.lam[0]]),
                   self.count + 1)


def _levels(schedule: Schedule, index):
  """(alpha, sigma, lambda) at index's level and at the level below it."""
  abar = schedule.alphas_cumprod[index]
  abar_next = schedule.alphas_cumprod_prev[index]
  alpha, sigma = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
  alpha_next, sigma_next = jnp.sqrt(abar_next), jnp.sqrt(1.0 - abar_next)
  return (alpha, sigma, jnp.log(alpha) - jnp.log(sigma),
          alpha_next, sigma_next, jnp.log(alpha_next) - jnp.log(sigma_next))


def solver_order(order: int, count, index, num_steps: int):
  """The order a multistep solver can use at `index`: at most `order`, at
  most one more than the steps with history, and lower at the last steps
  (diffusers' final step to sigma 0 and its lower_order_final).

  Our respacings keep t = 0, whose level is within 1e-4 of the data: the
  step into it (index 1) is the last real step and is first order, as
  diffusers' last step (to sigma 0) is; below 15 steps the one before it is
  at most second order. (A second-order step into t = 0 extrapolates over a
  long last step: at 10 uniform steps of the linear schedule it goes from
  lambda 0.97 to 4.61 with r = 0.21, and 2M landed 5 times farther from the
  ODE's solution than DDIM.)"""
  used = jnp.minimum(order, count + 1)
  used = jnp.where(index <= 1, 1, used)
  if num_steps < LOWER_ORDER_FINAL_BELOW:
    used = jnp.minimum(used, jnp.maximum(index, 1))
  return used


def dpmpp_step(schedule: Schedule, x, x0, index, history: History, order: int,
               num_steps: int, sde: bool = False, noise=None):
  """One DPM-Solver++ step from index's level to the one below.

  Args:
    schedule: the respaced schedule.
    x: [B, ...] the state at index's level.
    x0: [B, ...] the data prediction there.
    index: int [] the respaced index.
    history: the previous predictions (`History`).
    order: 2 or 3 (the SDE variant: 2).
    num_steps: the schedule's length (for the lower-order final steps).
    sde: the SDE-DPM-Solver++ variant (needs `noise`, [B, ...] N(0, 1)).

  Returns:
    (x at the level below, the updated history).
  """
  alpha, sigma, lam, alpha_next, sigma_next, lam_next = _levels(schedule, index)
  h = lam_next - lam
  used = solver_order(order, history.count, index, num_steps)
  m0, m1, m2 = x0, history.x0[0], history.x0[1]
  r0 = (lam - history.lam[0]) / h
  r1 = (history.lam[0] - history.lam[1]) / h
  d1_0 = (m0 - m1) / r0
  d1_1 = (m1 - m2) / r1
  if sde:
    decay = jnp.exp(-h)
    first = sigma_next / sigma * decay * x + alpha_next * (1.0 - decay ** 2) * m0
    second = first + 0.5 * alpha_next * (1.0 - decay ** 2) * d1_0
    x_next = (jnp.where(used >= 2, second, first)
              + sigma_next * jnp.sqrt(-jnp.expm1(-2.0 * h)) * noise)
  else:
    phi = jnp.expm1(-h)  # e^{-h} - 1
    first = sigma_next / sigma * x - alpha_next * phi * m0
    second = first - 0.5 * alpha_next * phi * d1_0
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    third = (first + alpha_next * (phi / h + 1.0) * d1
             - alpha_next * ((phi + h) / h ** 2 - 0.5) * d2)
    x_next = jnp.where(used >= 3, third, jnp.where(used >= 2, second, first))
  x_next = jnp.where(sigma_next > 0, x_next, x0)  # the final step: x_0 itself
  return x_next, history.push(x0, lam)


def ve_sigma(schedule: Schedule, t, ndim, below: bool = False):
  """sigma / alpha at the level of index t (or the level below it): [B, 1, ...],
  the noise level of the variance-exploding variable x / alpha."""
  abar = schedule.alphas_cumprod_prev if below else schedule.alphas_cumprod
  a = diffusion.extract(abar, t, ndim)
  return jnp.sqrt((1.0 - a) / a)
