"""Bits per dimension: every term against an independent float64
computation, and the bound above the exact negative log-likelihood, for
256-level data from a Gaussian mixture with its exact denoiser."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from diffusion_jax import likelihood, oracles, schedules

MIXTURE = oracles.GaussianMixture(weights=[0.3, 0.7], means=[[-0.5, 0.3], [0.4, -0.2]],
                                  stds=[0.15, 0.2])


def quantised(x):
  return np.clip(np.round((np.asarray(x, np.float64) + 1) * 127.5), 0, 255) / 127.5 - 1


def exact_nll_bits(x):
  """-log2 of the mixture's mass in each point's 256-level bin, per dimension."""
  low = np.where(x < -0.999, -np.inf, x - 1 / 255)
  high = np.where(x > 0.999, np.inf, x + 1 / 255)
  mass = 0
  for w, mean, std in zip(MIXTURE.weights, MIXTURE.means, MIXTURE.stds):
    per_dim = norm.cdf((high - mean) / std) - norm.cdf((low - mean) / std)  # [B, d]
    mass = mass + w * per_dim.prod(-1)
  return -np.log2(mass) / x.shape[1]


def float64_terms(sched, x0, rng, model_fn):
  """Each L_t from the betas in float64, the model's eps as given."""
  betas = np.asarray(sched.betas, np.float64)
  abar = np.cumprod(1 - betas)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  post_var = betas * (1 - abar_prev) / (1 - abar)
  post_log_var = np.log(np.concatenate([post_var[1:2], post_var[1:]]))
  terms = []
  for t in range(sched.num_timesteps):
    noise = np.asarray(likelihood.noise_at(rng, t, x0.shape), np.float64)
    x_t = np.sqrt(abar[t]) * x0 + np.sqrt(1 - abar[t]) * noise
    eps = np.asarray(model_fn(jnp.asarray(x_t, jnp.float32), jnp.full((len(x0),), t)),
                     np.float64)
    pred_x0 = (x_t - np.sqrt(1 - abar[t]) * eps) / np.sqrt(abar[t])
    coef1 = np.sqrt(abar_prev[t]) * betas[t] / (1 - abar[t])
    coef2 = np.sqrt(1 - betas[t]) * (1 - abar_prev[t]) / (1 - abar[t])
    mean_model = coef1 * pred_x0 + coef2 * x_t
    log_var = post_log_var[t]
    if t == 0:
      std = np.exp(0.5 * log_var)
      low = np.where(x0 < -0.999, -np.inf, x0 - 1 / 255)
      high = np.where(x0 > 0.999, np.inf, x0 + 1 / 255)
      mass = norm.cdf((high - mean_model) / std) - norm.cdf((low - mean_model) / std)
      terms.append(-np.log(np.maximum(mass, 1e-12)).mean(1) / np.log(2))
      continue
    mean_true = coef1 * x0 + coef2 * x_t
    kl = 0.5 * ((mean_true - mean_model) ** 2 / np.exp(log_var))  # equal variances
    terms.append(kl.mean(1) / np.log(2))
  prior_mean, prior_var = np.sqrt(abar[-1]) * x0, 1 - abar[-1]
  prior = 0.5 * (-1 - np.log(prior_var) + prior_var + prior_mean ** 2).mean(1) / np.log(2)
  return np.stack(terms, 1), prior


@pytest.fixture(scope="module")
def data_and_bound():
  sched = schedules.make_schedule("linear", 200)
  x, _ = MIXTURE.sample(jax.random.key(0), 256)
  x0 = quantised(x)
  model_fn = MIXTURE.model_fn(sched)
  rng = jax.random.key(1)
  bound = likelihood.bits_per_dim(model_fn, sched, x0, rng)
  return sched, x0, model_fn, rng, bound


def test_each_term_equals_a_float64_computation(data_and_bound):
  sched, x0, model_fn, rng, bound = data_and_bound
  terms, prior = float64_terms(sched, x0[:16], rng, model_fn)
  np.testing.assert_allclose(np.asarray(bound["terms"])[:16], terms, rtol=2e-3, atol=2e-5)
  np.testing.assert_allclose(np.asarray(bound["prior"])[:16], prior, rtol=1e-3, atol=1e-6)
  np.testing.assert_allclose(bound["total"], np.asarray(bound["terms"]).sum(1) + bound["prior"],
                             rtol=1e-6)


def test_the_bound_is_not_below_the_exact_nll(data_and_bound):
  _, x0, _, _, bound = data_and_bound
  total = np.asarray(bound["total"], np.float64)
  nll = exact_nll_bits(x0)
  # Per image the bound's noise can dip it; on average it holds, by a margin
  # several standard errors wide.
  gap = total - nll
  assert gap.mean() > 3 * gap.std() / np.sqrt(len(gap)) > 0
  assert gap.mean() < 0.5 * nll.mean()  # and it is a bound, not a blow-up
