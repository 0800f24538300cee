"""Forward process, reverse mean/variance, losses and timestep sampling,
checked against float64 numpy and scipy computed independently here."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import reference_betas
from scipy import integrate, stats

from diffusion_jax import diffusion, schedules

T = 1000
SCHED = schedules.make_schedule("cosine", T)
LINEAR = schedules.make_schedule("linear", T)
T_EDGES = np.array([0, 1, 2, 137, 500, 998, 999])


def f64(sched, name):
  """A coefficient from the float64 reference formulas (tests/reference.py)."""
  kind = "cosine" if sched is SCHED else "linear"
  betas = reference_betas(kind, T)
  abar = np.cumprod(1 - betas)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  return {"abar": abar, "abar_prev": abar_prev, "betas": betas,
          "post_var": betas * (1 - abar_prev) / (1 - abar)}[name]


def batch(shape=(len(T_EDGES), 3, 2, 2), seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  x0 = jax.random.uniform(k1, shape, minval=-1, maxval=1)
  return x0, jax.random.normal(k2, shape)


def bcast(values, t):
  return values[t][:, None, None, None]


def test_q_sample_and_q_mean_variance():
  x0, noise = batch()
  abar = bcast(f64(LINEAR, "abar"), T_EDGES)
  expected = np.sqrt(abar) * np.asarray(x0) + np.sqrt(1 - abar) * np.asarray(noise)
  np.testing.assert_allclose(diffusion.q_sample(LINEAR, x0, T_EDGES, noise), expected,
                             rtol=1e-5, atol=1e-6)
  mean, var, log_var = diffusion.q_mean_variance(LINEAR, x0, T_EDGES)
  np.testing.assert_allclose(mean, np.sqrt(abar) * np.asarray(x0), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(var, np.broadcast_to(1 - abar, x0.shape), rtol=1e-5)
  np.testing.assert_allclose(log_var, np.log(np.broadcast_to(1 - abar, x0.shape)), rtol=1e-5)


def test_conversions_are_mutually_inverse():
  x0, noise = batch()
  t = T_EDGES
  x_t = diffusion.q_sample(SCHED, x0, t, noise)
  v = diffusion.v_from_x0_eps(SCHED, x0, noise, t)
  abar = bcast(f64(SCHED, "abar"), t)
  np.testing.assert_allclose(v, np.sqrt(abar) * noise - np.sqrt(1 - abar) * x0, atol=1e-5)
  # t = 999 of the cosine schedule has abar ~ 2e-9: x0 from eps is ill-posed there.
  ok = t < 999
  np.testing.assert_allclose(diffusion.x0_from_eps(SCHED, x_t, t, noise)[ok], x0[ok],
                             atol=2e-3)
  np.testing.assert_allclose(diffusion.eps_from_x0(SCHED, x_t, t, x0)[1:], noise[1:],
                             atol=2e-3)
  np.testing.assert_allclose(diffusion.x0_from_v(SCHED, x_t, t, v), x0, atol=1e-5)
  np.testing.assert_allclose(diffusion.eps_from_v(SCHED, x_t, t, v), noise, atol=1e-5)


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_true_prediction_gives_true_posterior(parameterization):
  x0, noise = batch()
  t = np.array([1, 2, 137, 500, 600, 700, 900])  # x0 is recoverable at these t
  x_t = diffusion.q_sample(LINEAR, x0, t, noise)
  prediction = {"eps": noise, "x0": x0,
                "v": diffusion.v_from_x0_eps(LINEAR, x0, noise, t)}[parameterization]
  out = diffusion.p_mean_variance(LINEAR, prediction, x_t, t,
                                  parameterization=parameterization, clip_denoised=False)
  mean, var, _ = diffusion.q_posterior(LINEAR, x0, x_t, t)
  np.testing.assert_allclose(out.pred_x0, x0, atol=2e-4)
  np.testing.assert_allclose(out.mean, mean, atol=2e-5)
  np.testing.assert_allclose(out.variance, var, rtol=1e-5)
  np.testing.assert_allclose(out.pred_eps, noise, atol=2e-3)


def test_fixed_variances_are_posterior_and_beta():
  x0, noise = batch()
  t = T_EDGES
  x_t = diffusion.q_sample(SCHED, x0, t, noise)
  post_var = f64(SCHED, "post_var")
  clipped_small = np.concatenate([[post_var[1]], post_var[1:]])
  small = diffusion.p_mean_variance(SCHED, noise, x_t, t, variance="fixed_small")
  np.testing.assert_allclose(small.log_variance, np.broadcast_to(
      np.log(bcast(clipped_small, t)), x0.shape), rtol=1e-5)
  large_ref = np.concatenate([[post_var[1]], f64(SCHED, "betas")[1:]])
  large = diffusion.p_mean_variance(SCHED, noise, x_t, t, variance="fixed_large")
  np.testing.assert_allclose(large.variance, np.broadcast_to(
      bcast(large_ref, t), x0.shape), rtol=1e-5)
  assert not np.allclose(small.variance[1:], large.variance[1:])


def test_learned_range_interpolates_log_variances():
  x0, noise = batch()
  t = T_EDGES
  x_t = diffusion.q_sample(SCHED, x0, t, noise)
  post_var = f64(SCHED, "post_var")
  log_small = np.log(bcast(np.concatenate([[post_var[1]], post_var[1:]]), t))
  log_large = np.log(bcast(f64(SCHED, "betas"), t))
  for v, frac in [(-1.0, 0.0), (1.0, 1.0), (0.0, 0.5), (0.5, 0.75)]:
    output = jnp.concatenate([noise, jnp.full_like(noise, v)], -1)
    out = diffusion.p_mean_variance(SCHED, output, x_t, t, variance="learned_range")
    expected = frac * log_large + (1 - frac) * log_small
    np.testing.assert_allclose(out.log_variance, np.broadcast_to(expected, x0.shape),
                               rtol=1e-5, atol=1e-6)
  learned = diffusion.p_mean_variance(
      SCHED, jnp.concatenate([noise, jnp.full_like(noise, -3.0)], -1), x_t, t,
      variance="learned")
  np.testing.assert_allclose(learned.variance, np.exp(-3.0), rtol=1e-6)


def test_clipping_and_denoised_fn():
  x0, noise = batch()
  t = np.full(len(T_EDGES), 900)
  x_t = diffusion.q_sample(SCHED, x0 * 5, t, noise)
  out = diffusion.p_mean_variance(SCHED, noise, x_t, t, clip_denoised=True)
  assert float(jnp.max(jnp.abs(out.pred_x0))) <= 1.0
  raw = diffusion.p_mean_variance(SCHED, noise, x_t, t, clip_denoised=False)
  assert float(jnp.max(jnp.abs(raw.pred_x0))) > 1.5
  zeroed = diffusion.p_mean_variance(SCHED, noise, x_t, t, clip_denoised=False,
                                     denoised_fn=jnp.zeros_like)
  np.testing.assert_allclose(zeroed.pred_x0, 0.0)
  mean, _, _ = diffusion.q_posterior(SCHED, jnp.zeros_like(x0), x_t, t)
  np.testing.assert_allclose(zeroed.mean, mean, atol=1e-6)


def test_bad_arguments_raise():
  x0, noise = batch()
  t = T_EDGES
  with pytest.raises(ValueError, match="parameterization 'score'"):
    diffusion.p_mean_variance(SCHED, noise, x0, t, parameterization="score")
  with pytest.raises(ValueError, match="variance 'tiny'"):
    diffusion.p_mean_variance(SCHED, noise, x0, t, variance="tiny")
  with pytest.raises(ValueError, match="2 x 2 channels"):
    diffusion.p_mean_variance(SCHED, noise, x0, t, variance="learned_range")
  with pytest.raises(ValueError, match="needs a model output with 2 channels"):
    diffusion.p_mean_variance(SCHED, jnp.concatenate([noise, noise], -1), x0, t)


# ------------------------------------------------------------------ losses --

def test_normal_kl_matches_numerical_integral():
  m1, lv1, m2, lv2 = 0.3, np.log(0.5), -0.2, np.log(1.7)
  p, q = stats.norm(m1, np.exp(lv1 / 2)), stats.norm(m2, np.exp(lv2 / 2))
  numeric, _ = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -20, 20)
  assert float(diffusion.normal_kl(m1, lv1, m2, lv2)) == pytest.approx(numeric, rel=1e-5)


def test_discretized_log_likelihood_matches_scipy_bins():
  x = np.array([-1.0, -1 + 2 / 255 * 7, 0.0039215686, 0.5, 1.0])
  mean = np.array([-0.9, -0.95, 0.01, 0.49, 0.8])
  scale = np.array([0.1, 0.02, 0.01, 0.03, 0.5])
  dist = stats.norm(mean, scale)
  expected = np.log(np.where(
      x < -0.999, dist.cdf(x + 1 / 255),
      np.where(x > 0.999, 1 - dist.cdf(x - 1 / 255),
               dist.cdf(x + 1 / 255) - dist.cdf(x - 1 / 255))))
  got = diffusion.discretized_gaussian_log_likelihood(
      jnp.asarray(x, jnp.float32), jnp.asarray(mean, jnp.float32),
      jnp.asarray(np.log(scale), jnp.float32))
  np.testing.assert_allclose(got, expected, rtol=2e-4)


def test_simple_loss_is_mse_to_the_target():
  x0, noise = batch()
  t = T_EDGES
  guess = noise * 0.5
  for parameterization, target in [
      ("eps", noise), ("x0", x0), ("v", diffusion.v_from_x0_eps(SCHED, x0, noise, t))]:
    losses = diffusion.training_losses(SCHED, guess, x0, t, noise,
                                       parameterization=parameterization)
    expected = np.mean((np.asarray(guess) - np.asarray(target)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(losses["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(losses["vb"], 0.0)


def test_hybrid_loss_value_and_stop_gradient():
  x0, noise = batch()
  t = np.array([0, 1, 10, 400, 998])
  x0, noise = x0[:5], noise[:5]
  x0 = jnp.round((x0 + 1) * 127.5) / 127.5 - 1  # on the 8-bit grid for t = 0
  var_out = jnp.full_like(noise, 0.3)
  losses = diffusion.training_losses(SCHED, jnp.concatenate([noise, var_out], -1),
                                     x0, t, noise, variance="learned_range")
  # With the true eps the model mean is the true posterior mean, so for t > 0
  # L_t is KL(N(m, s) || N(m, s')) = (s / s' - 1 - log(s / s')) / 2, in bits.
  post_var = f64(SCHED, "post_var")
  log_small = np.log(np.concatenate([[post_var[1]], post_var[1:]]))[t]
  log_model = 0.65 * np.log(f64(SCHED, "betas"))[t] + 0.35 * log_small
  ratio = np.exp(log_small - log_model)
  kl_bits = 0.5 * (ratio - 1 - np.log(ratio)) / np.log(2)
  np.testing.assert_allclose(losses["vb"][1:], (kl_bits * 0.001 * T)[1:], rtol=1e-3,
                             atol=1e-6)
  np.testing.assert_allclose(losses["mse"], 0.0, atol=1e-10)
  # t = 0: the decoder's discretised NLL of x0 under N(x0, exp(log_model)).
  scale0 = np.exp(0.5 * log_model[0])
  x = np.asarray(x0[0], np.float64)
  upper, lower = stats.norm.cdf(1 / 255 / scale0), stats.norm.cdf(-1 / 255 / scale0)
  ll = np.where(x < -0.999, np.log(upper),
                np.where(x > 0.999, np.log(1 - lower), np.log(upper - lower)))
  assert float(losses["vb"][0]) == pytest.approx(-ll.mean() / np.log(2) * 0.001 * T,
                                                 rel=1e-3)

  def total(pred, var):
    return jnp.sum(diffusion.training_losses(
        SCHED, jnp.concatenate([pred, var], -1), x0, t, noise,
        variance="learned_range")["vb"])
  wrong = noise + 0.3
  grad_pred, grad_var = jax.grad(total, argnums=(0, 1))(wrong, var_out)
  assert float(jnp.max(jnp.abs(grad_pred))) == 0.0  # mean stop-gradiented
  assert float(jnp.max(jnp.abs(grad_var))) > 0.0


# ------------------------------------------------------- timestep sampling --

def test_uniform_timesteps():
  t, w = diffusion.sample_timesteps(jax.random.key(0), 20000, 10)
  counts = np.bincount(np.asarray(t), minlength=10)
  assert counts.min() > 1800 and counts.max() < 2200
  np.testing.assert_array_equal(w, 1.0)


def test_loss_history_records_and_rolls():
  hist = diffusion.init_loss_history(4, history=3)
  hist = diffusion.update_loss_history(hist, jnp.array([1, 1, 2]),
                                       jnp.array([10.0, 11.0, 5.0]))
  np.testing.assert_array_equal(hist.counts, [0, 2, 1, 0])
  np.testing.assert_array_equal(hist.losses[1], [10.0, 11.0, 0.0])
  hist = diffusion.update_loss_history(hist, jnp.array([1, 1]), jnp.array([12.0, 13.0]))
  np.testing.assert_array_equal(hist.counts[1], 3)
  np.testing.assert_array_equal(hist.losses[1], [11.0, 12.0, 13.0])  # oldest dropped


def test_importance_sampling_is_unbiased_and_proportional():
  steps, slots = 8, 4
  hist = diffusion.init_loss_history(steps, slots)
  t, w = diffusion.sample_timesteps(jax.random.key(1), 64, steps, hist)
  np.testing.assert_array_equal(w, 1.0)  # uniform until warm
  loss_of_t = jnp.arange(1.0, steps + 1)
  for _ in range(slots):
    hist = diffusion.update_loss_history(hist, jnp.arange(steps), loss_of_t)
  probs = np.asarray(diffusion.timestep_probabilities(hist, uniform_prob=0.01))
  expected = np.arange(1, steps + 1) / np.arange(1, steps + 1).sum() * 0.99 + 0.01 / steps
  np.testing.assert_allclose(probs, expected, rtol=1e-6)
  t, w = diffusion.sample_timesteps(jax.random.key(2), 200000, steps, hist, 0.01)
  estimate = float(jnp.mean(w * loss_of_t[t]))
  assert estimate == pytest.approx(float(loss_of_t.mean()), rel=0.01)
  freq = np.bincount(np.asarray(t), minlength=steps) / t.shape[0]
  np.testing.assert_allclose(freq, expected, atol=0.005)
