"""Schedules and respacing against independent float64 computations."""
import math

import numpy as np
import pytest
from reference import reference_betas, reference_coefficients

from diffusion_jax import diffusion, schedules

T = 1000


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("total", [1000, 4000, 50])
def test_every_coefficient_matches_float64_reference(kind, total):
  sched = schedules.make_schedule(kind, total)
  for name, expected in reference_coefficients(reference_betas(kind, total)).items():
    got = np.asarray(getattr(sched, name), np.float64)
    assert got.dtype == np.float64 and getattr(sched, name).dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-30, err_msg=name)
  np.testing.assert_array_equal(sched.timesteps, np.arange(total))


def test_edge_values_at_first_and_last_step():
  sched = schedules.make_schedule("linear", T)
  assert float(sched.betas[0]) == pytest.approx(1e-4, rel=1e-6)
  assert float(sched.betas[-1]) == pytest.approx(0.02, rel=1e-6)
  assert float(sched.alphas_cumprod_prev[0]) == 1.0
  assert float(sched.alphas_cumprod_next[-1]) == 0.0
  assert float(sched.posterior_variance[0]) == 0.0
  # log variance at t = 0 is clipped to beta~_1, finite.
  assert float(sched.posterior_log_variance_clipped[0]) == pytest.approx(
      math.log(float(sched.posterior_variance[1])), rel=1e-6)
  cosine = schedules.make_schedule("cosine", T)
  assert float(cosine.betas[-1]) == pytest.approx(0.999, rel=1e-6)  # clipped
  assert np.all(np.diff(np.asarray(cosine.alphas_cumprod)) < 0)


def test_posterior_is_bayes_rule_of_the_two_gaussian_steps():
  """q(x_{t-1} | x_t, x_0) derived by Gaussian conditioning, not by the
  library's formula: x_{t-1} ~ N(sqrt(abar_prev) x0, 1 - abar_prev) and
  x_t | x_{t-1} ~ N(sqrt(alpha_t) x_{t-1}, beta_t)."""
  sched = schedules.make_schedule("cosine", T)
  betas = reference_betas("cosine", T)
  abar_prev = np.concatenate([[1.0], np.cumprod(1 - betas)[:-1]])
  t = np.array([1, 2, 10, 500, 998, 999])
  x0 = np.linspace(-1, 1, t.size)
  x_t = np.linspace(0.7, -2.0, t.size)
  precision = 1 / (1 - abar_prev[t]) + (1 - betas[t]) / betas[t]
  var = 1 / precision
  mean = var * (np.sqrt(abar_prev[t]) * x0 / (1 - abar_prev[t])
                + np.sqrt(1 - betas[t]) * x_t / betas[t])
  got_mean, got_var, got_log_var = diffusion.q_posterior(
      sched, x0[:, None].astype(np.float32), x_t[:, None].astype(np.float32), t)
  np.testing.assert_allclose(np.asarray(got_mean)[:, 0], mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got_var)[:, 0], var, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(got_log_var)[:, 0], np.log(var), rtol=1e-5)


def test_unknown_kind_and_bad_length_raise():
  with pytest.raises(ValueError, match="quadratic"):
    schedules.make_schedule("quadratic", 10)
  with pytest.raises(ValueError, match="positive"):
    schedules.make_schedule("linear", 0)


# -------------------------------------------------------------- respacing --

def reference_space_timesteps(total, counts):
  """REFERENCE.md's description, transcribed independently."""
  n = len(counts)
  sizes = [total // n + (1 if i < total % n else 0) for i in range(n)]
  kept, start = [], 0
  for size, count in zip(sizes, counts):
    stride = 1 if count == 1 else (size - 1) / (count - 1)
    pos = 0.0
    for _ in range(count):
      kept.append(start + round(pos))
      pos += stride
    start += size
  return kept


@pytest.mark.parametrize("spec,counts", [
    ("100", [100]), ("250", [250]), ("10,10,3,2,2", [10, 10, 3, 2, 2]),
    ("1", [1]), ("7,1,13", [7, 1, 13]), ("999", [999]), ("1000", [1000])])
def test_section_respacing_matches_reference(spec, counts):
  kept = schedules.space_timesteps(T, spec)
  assert kept == reference_space_timesteps(T, counts)
  assert len(kept) == sum(counts) and kept == sorted(set(kept))


def test_small_hand_worked_respacings():
  assert schedules.space_timesteps(10, "2") == [0, 9]
  assert schedules.space_timesteps(10, "1") == [0]
  assert schedules.space_timesteps(10, "3,2") == [0, 2, 4, 5, 9]
  assert schedules.space_timesteps(10, "10") == list(range(10))
  assert schedules.space_timesteps(11, "2,2") == [0, 5, 6, 10]  # first section is 6 long


def test_ddim_and_fast27():
  assert schedules.space_timesteps(T, "ddim25") == list(range(0, T, 40))
  assert schedules.space_timesteps(T, "ddim50") == list(range(0, T, 20))
  assert schedules.space_timesteps(T, "ddim1000") == list(range(T))
  fast = schedules.space_timesteps(T, "fast27")
  sections = schedules.space_timesteps(T, "10,10,3,2,2")
  assert len(fast) == 27 and 999 in sections and 999 not in fast
  assert fast == sections[:-1] + [997]


@pytest.mark.parametrize("spec", [
    "0", "1001", "5,0", "ddim999", "ddimX", "ddim", "fast", "abc", "", "10,,3",
    "300,300,300,300"])
def test_bad_specs_raise_naming_the_spec(spec):
  with pytest.raises(ValueError) as err:
    schedules.space_timesteps(T, spec)
  assert repr(spec) in str(err.value)


def test_section_that_cannot_be_split_raises():
  with pytest.raises(ValueError, match=r"'10,10,3,2,2'.*section of 2"):
    schedules.space_timesteps(10, "10,10,3,2,2")
  with pytest.raises(ValueError, match="fast27"):
    schedules.space_timesteps(20, "fast27")


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("spec", ["ddim25", "100", "10,10,3,2,2", "fast27"])
def test_respaced_schedule_keeps_alpha_bar_and_recomputes_betas(kind, spec):
  base = reference_coefficients(reference_betas(kind, T))
  fast = schedules.respace(schedules.make_schedule(kind, T), spec)
  kept = schedules.space_timesteps(T, spec)
  np.testing.assert_array_equal(fast.timesteps, kept)
  abar = base["alphas_cumprod"][kept]
  betas = 1 - abar / np.concatenate([[1.0], abar[:-1]])
  np.testing.assert_allclose(fast.alphas_cumprod, abar, rtol=5e-6)
  np.testing.assert_allclose(fast.betas, betas, rtol=5e-5)
  for name, expected in reference_coefficients(betas).items():
    np.testing.assert_allclose(getattr(fast, name), expected, rtol=5e-5, err_msg=name)


def test_identity_respacing_and_composition():
  base = schedules.make_schedule("linear", T)
  same = schedules.respace(base, "1000")
  np.testing.assert_allclose(same.betas, base.betas, rtol=1e-6)
  np.testing.assert_allclose(same.posterior_log_variance_clipped,
                             base.posterior_log_variance_clipped, rtol=1e-6)
  twice = schedules.respace(schedules.respace(base, "500"), "ddim50")
  inner = schedules.space_timesteps(T, "500")
  assert list(np.asarray(twice.timesteps)) == [inner[i] for i in range(0, 500, 10)]
  np.testing.assert_allclose(twice.alphas_cumprod,
                             np.asarray(base.alphas_cumprod)[np.asarray(twice.timesteps)],
                             rtol=5e-6)
