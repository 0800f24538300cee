"""Closed-form denoisers: the exact optimal models for two kinds of data.

A Gaussian mixture stays a Gaussian mixture under q(x_t | x_0): component k
has mean sqrt(abar) mu_k and variance abar s_k^2 + 1 - abar. So the exact
eps*(x_t, t) = -sqrt(1 - abar) grad log p_t(x_t), the exact noisy-classifier
log p(y | x_t) and the exact class-conditional eps* are all closed-form.
For a finite training set the optimal denoiser is a softmax-weighted average
of the training examples. Tests, the demo and notebooks use these as models.

Model functions take original timesteps and read abar from the `Schedule`
they were made with, the original one or a respaced one (whose `timesteps`
map original steps back to its own indices).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.schedules import Schedule


def _flat(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1).astype(jnp.float32)


def _abar(schedule: Schedule, t: jax.Array) -> jax.Array:
  """abar at original timesteps t: [B, 1]. A respaced schedule is indexed
  where its `timesteps` hold t (indexing it by t itself would clamp every
  t past its length to its noisiest step)."""
  index = jnp.searchsorted(schedule.timesteps, t)
  return schedule.alphas_cumprod[index][:, None]  # [B, 1]


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
  """sum_k weights_k N(means_k, stds_k^2 I) in d dimensions.

  Attributes:
    weights: [K] mixture proportions (summing to 1).
    means: [K, d] component means.
    stds: [K] isotropic component standard deviations.
  """
  weights: np.ndarray
  means: np.ndarray
  stds: np.ndarray

  def __post_init__(self):
    for name in ("weights", "means", "stds"):
      object.__setattr__(self, name, np.asarray(getattr(self, name), np.float32))
    if not np.isclose(self.weights.sum(), 1.0, atol=1e-5):
      raise ValueError(f"mixture weights must sum to 1, got {self.weights.sum()}")

  @property
  def num_components(self) -> int:
    return self.weights.shape[0]

  @property
  def dim(self) -> int:
    return self.means.shape[1]

  def sample(self, rng: jax.Array, n: int):
    """n draws: (x [n, d], component labels [n])."""
    label_rng, noise_rng = jax.random.split(rng)
    labels = jax.random.choice(label_rng, self.num_components, (n,), p=self.weights)
    noise = jax.random.normal(noise_rng, (n, self.dim))
    return self.means[labels] + self.stds[labels][:, None] * noise, labels

  def _noisy_components(self, abar):
    """Means [B, K, d] and variances [B, K] of the components of p_t."""
    means = jnp.sqrt(abar)[:, :, None] * self.means[None]
    variances = abar * self.stds[None] ** 2 + (1.0 - abar)
    return means, variances

  def _log_joint(self, x, abar):
    """log pi_k + log N_k(x_t): [B, K], and the per-component residuals."""
    means, variances = self._noisy_components(abar)
    residual = x[:, None, :] - means  # [B, K, d]
    log_norm = -0.5 * self.dim * jnp.log(2 * jnp.pi * variances)
    log_joint = (jnp.log(self.weights)[None] + log_norm
                 - 0.5 * jnp.sum(residual ** 2, -1) / variances)
    return log_joint, residual, variances

  def class_log_prob_at(self, x, abar, y):
    """Exact log p(y | x_t) of a noisy classifier: [B]."""
    log_joint, _, _ = self._log_joint(_flat(x), abar)
    log_post = jax.nn.log_softmax(log_joint, axis=-1)
    return jnp.take_along_axis(log_post, y[:, None].astype(jnp.int32), -1)[:, 0]

  def _posterior(self, x, abar, y):
    """Component responsibilities [B, K] given x_t (one-hot on y where y < K),
    residuals [B, K, d] and the noisy components' variances [B, K]."""
    log_joint, residual, variances = self._log_joint(_flat(x), abar)
    resp = jax.nn.softmax(log_joint, axis=-1)
    if y is not None:
      resp = jnp.where((y >= self.num_components)[:, None], resp,
                       jax.nn.one_hot(y, self.num_components))
    return resp, residual, variances

  def eps_at(self, x, abar, y=None):
    """Exact eps*(x_t) (y None or >= K) or eps*(x_t | y): same shape as x."""
    resp, residual, variances = self._posterior(x, abar, y)
    # -score = sum_k r_k (x - m_k) / v_k; eps = sqrt(1 - abar) * (-score)
    neg_score = jnp.sum(resp[:, :, None] * residual / variances[:, :, None], 1)
    return (jnp.sqrt(1.0 - abar) * neg_score).reshape(x.shape)

  def x0_at(self, x, abar, y=None):
    """Exact E[x_0 | x_t] (y as in `eps_at`), finite where abar = 0 (the
    mixture's mean there, or its component y's)."""
    resp, residual, variances = self._posterior(x, abar, y)
    # E[x_0 | x_t, k] = m_k + sqrt(abar) s_k^2 (x_t - sqrt(abar) m_k) / v_k
    gain = jnp.sqrt(abar) * self.stds[None] ** 2 / variances  # [B, K]
    posterior = self.means[None] + gain[:, :, None] * residual  # [B, K, d]
    return jnp.sum(resp[:, :, None] * posterior, 1).reshape(x.shape)

  def model_fn(self, schedule: Schedule, parameterization: str = "eps"):
    """`model_fn(x_t, t, y=None)`: the exact eps (or v, or x_0, each exact
    where abar = 0 too); label K (or none) = unconditional."""
    def fn(x_t, t, y=None):
      abar = _abar(schedule, t)
      if parameterization == "eps":
        return self.eps_at(x_t, abar, y)
      x0 = self.x0_at(x_t, abar, y)
      if parameterization == "x0":
        return x0
      shaped = abar.reshape((-1,) + (1,) * (x_t.ndim - 1))
      return jnp.sqrt(shaped) * self.eps_at(x_t, abar, y) - jnp.sqrt(1.0 - shaped) * x0
    return fn

  def class_log_prob_fn(self, schedule: Schedule):
    """`log_prob_fn(x_t, t, y)`: exact log p(y | x_t) for `guidance.classifier`."""
    def fn(x_t, t, y, **unused_cond):
      return self.class_log_prob_at(x_t, _abar(schedule, t), y)
    return fn


def as_prediction(eps_fn, schedule: Schedule, parameterization: str):
  """An eps model function as the model of another target: the same
  denoiser, outputting v or x_0 (`model_fn(x_t, t, **cond)`, t original)."""
  from diffusion_jax import diffusion
  diffusion.check_choice("parameterization", parameterization, diffusion.PARAMETERIZATIONS)

  def fn(x_t, t, **cond):
    eps = eps_fn(x_t, t, **cond)
    abar = _abar(schedule, t).reshape((-1,) + (1,) * (x_t.ndim - 1))
    x0 = (x_t - jnp.sqrt(1.0 - abar) * eps) / jnp.sqrt(abar)
    if parameterization == "x0":
      return x0
    if parameterization == "v":
      return jnp.sqrt(abar) * eps - jnp.sqrt(1.0 - abar) * x0
    return eps
  return fn


def finite_set_model_fn(images: jax.Array, schedule: Schedule):
  """The optimal eps-model for a training set of N examples [N, ...].

  `E[x_0 | x_t] = sum_i softmax_i(-|x_t - sqrt(abar) x_i|^2 / (2 (1 - abar))) x_i`
  and `eps = (x_t - sqrt(abar) E[x_0 | x_t]) / sqrt(1 - abar)`.
  """
  train = _flat(jnp.asarray(images))  # [N, D]

  def fn(x_t, t, **unused_cond):
    abar = _abar(schedule, t)  # [B, 1]
    flat = _flat(x_t)
    sq_dist = jnp.sum((flat[:, None, :] - jnp.sqrt(abar)[:, :, None] * train[None]) ** 2, -1)
    weights = jax.nn.softmax(-sq_dist / (2.0 * (1.0 - abar)), axis=-1)  # [B, N]
    x0_hat = weights @ train
    eps = (flat - jnp.sqrt(abar) * x0_hat) / jnp.sqrt(1.0 - abar)
    return eps.reshape(x_t.shape)
  return fn
