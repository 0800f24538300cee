"""High-order solvers of the probability-flow ODE (and its SDE) on a
discrete schedule: DPM-Solver++ (Lu et al. 2022) multistep of orders 2 and
3, its SDE variant of order 2, UniPC (Zhao et al. 2023; B(h) = e^h - 1,
"bh2", order 2, data prediction) and Heun's method (Karras et al. 2022).

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

MULTISTEP = {"dpmpp_2m": 2, "dpmpp_3m": 3, "dpmpp_2m_sde": 2, "unipc": 2}
# diffusers' lower_order_final: under this many steps the last steps use a
# lower order (the final step, to x_0, is first order always).
LOWER_ORDER_FINAL_BELOW = 15


class History(NamedTuple):
  """The last data predictions of a multistep solver and their log-SNRs."""
  x0: jax.Array  # [2, *shape]: the predictions at the previous two steps
  lam: jax.Array  # [2] float32: their half log-SNRs, lambda = log(alpha / sigma)
  count: jax.Array  # int32 []: how many steps were taken so far
  sample: jax.Array  # [*shape]: UniPC's state before its last predictor step
  order: jax.Array  # int32 []: UniPC's last predictor order

  @classmethod
  def empty(cls, shape) -> History:
    return cls(jnp.zeros((2,) + tuple(shape), jnp.float32), jnp.zeros((2,), jnp.float32),
               jnp.zeros((), jnp.int32), jnp.zeros(tuple(shape), jnp.float32),
               jnp.zeros((), jnp.int32))

  def push(self, x0, lam) -> History:
    return self._replace(x0=jnp.stack([x0, self.x0[0]]), lam=jnp.stack([lam, self.lam[0]]),
                         count=self.count + 1)


def _levels(schedule: Schedule, index):
  """(alpha, sigma, lambda) at index's level and at the level below it."""
  abar = schedule.alphas_cumprod[index]
  abar_next = schedule.alphas_cumprod_prev[index]
  alpha, sigma = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
  alpha_next, sigma_next = jnp.sqrt(abar_next), jnp.sqrt(1.0 - abar_next)
  return (alpha, sigma, jnp.log(alpha) - jnp.log(sigma),
          alpha_next, sigma_next, jnp.log(alpha_next) - jnp.log(sigma_next))


def final_index(schedule: Schedule):
  """The index of the last real step: 1 where the schedule keeps t = 0
  (whose level is within 1e-4 of the data, so the step into it is the last
  real one), else 0 (diffusers' timesteps end above 0 and step to sigma 0)."""
  return jnp.where(schedule.timesteps[0] == 0, 1, 0)


def solver_order(order: int, count, index, num_steps: int, last):
  """The order a multistep solver can use at `index`: at most `order`, at
  most one more than the steps with history, first order at the last real
  step `last` (`final_index`) and below, and below 15 steps at most second
  order just before it (diffusers' final step to sigma 0 and its
  lower_order_final).

  (A second-order step into t = 0 extrapolates over a long last step: at 10
  uniform steps of the linear schedule it goes from lambda 0.97 to 4.61
  with r = 0.21, and 2M landed 5 times farther from the ODE's solution than
  DDIM.)"""
  used = jnp.minimum(order, count + 1)
  used = jnp.where(index <= last, 1, used)
  if num_steps < LOWER_ORDER_FINAL_BELOW:
    used = jnp.minimum(used, jnp.maximum(index - last + 1, 1))
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
  used = solver_order(order, history.count, index, num_steps, final_index(schedule))
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


def _unipc_coefficients(h):
  """UniPC's b_1, b_2 for B(h) = e^h - 1 ("bh2") in data prediction
  (hh = -h): with phi_1 = e^hh - 1, b_1 = (phi_1 / hh - 1) / B and
  b_2 = 2 ((phi_1 / hh - 1) / hh - 1/2) / B."""
  hh = -h
  phi_1 = jnp.expm1(hh)
  phi_k = phi_1 / hh - 1.0
  b1 = phi_k / phi_1
  b2 = 2.0 * (phi_k / hh - 0.5) / phi_1
  return phi_1, b1, b2


def unipc_step(schedule: Schedule, x, x0, index, history: History, num_steps: int,
               keep=None):
  """One UniPC step (bh2, order 2): the corrector UniC at this level, from
  the state before the last predictor step and this level's prediction (no
  extra network evaluation), then the predictor UniP to the level below.

  `keep` ([B, ..., 1], 1 where known pixels were pasted into `x`, or None):
  the corrector rebuilds x from its history, which would drop the paste;
  there x is kept as given.

  Returns:
    (x at the level below, the updated history).
  """
  alpha, sigma, lam, alpha_next, sigma_next, lam_next = _levels(schedule, index)
  last = final_index(schedule)
  # The corrector: the last predictor step again, now with x0 at its end.
  lam_p = history.lam[0]  # the level the last predictor step started from
  sigma_p = jnp.sqrt(1.0 - schedule.alphas_cumprod[index + 1])
  h = lam - lam_p
  phi_1, b1, b2 = _unipc_coefficients(h)
  m0, m1 = history.x0[0], history.x0[1]
  rk = (history.lam[1] - lam_p) / h
  d1 = (m1 - m0) / rk
  rho0 = (b1 - b2) / (1.0 - rk)  # solves [[1, 1], [rk, 1]] rho = [b1, b2]
  base = sigma / sigma_p * history.sample - alpha * phi_1 * m0
  first = base - alpha * phi_1 * 0.5 * (x0 - m0)
  second = base - alpha * phi_1 * (rho0 * d1 + (b1 - rho0) * (x0 - m0))
  corrected = jnp.where(history.order >= 2, second, first)
  if keep is not None:
    corrected = corrected * (1 - keep) + x * keep
  x = jnp.where(history.count > 0, corrected, x)
  # The predictor, from the corrected state.
  used = solver_order(2, history.count, index, num_steps, last)
  h = lam_next - lam
  phi_1, _, _ = _unipc_coefficients(h)
  predicted = sigma_next / sigma * x - alpha_next * phi_1 * x0
  rk = (history.lam[0] - lam) / h
  predicted_2 = predicted - alpha_next * phi_1 * 0.5 * (history.x0[0] - x0) / rk
  x_next = jnp.where(used >= 2, predicted_2, predicted)
  x_next = jnp.where(sigma_next > 0, x_next, x0)
  return x_next, history.push(x0, lam)._replace(sample=x, order=used)


def ve_sigma(schedule: Schedule, t, ndim, below: bool = False):
  """sigma / alpha at the level of index t (or the level below it): [B, 1, ...],
  the noise level of the variance-exploding variable x / alpha."""
  abar = schedule.alphas_cumprod_prev if below else schedule.alphas_cumprod
  a = diffusion.extract(abar, t, ndim)
  return jnp.sqrt((1.0 - a) / a)
