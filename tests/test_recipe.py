"""The training recipe's options against their closed forms: loss weightings
per prediction target, EDM's log-normal timesteps on a discrete schedule,
zero terminal SNR, the learning-rate decays, EDM2's power EMA, and the
residual-noise measure (docs/recipe.md)."""
import math
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from diffusion_jax import config_lib, diffusion, guidance, oracles, sampling, schedules
from diffusion_jax.evaluation import metrics
from diffusion_jax.training import optimizer, steps
from diffusion_jax.training import state as state_lib

T = 1000
COSINE = schedules.make_schedule("cosine", T)
LINEAR = schedules.make_schedule("linear", T)
EVERY_T = jnp.arange(T)


def snr64(sched):
  abar = np.cumprod(1.0 - np.asarray(sched.betas, np.float64))
  return abar / (1.0 - abar)


@pytest.mark.parametrize("target,closed_form", [
    ("eps", lambda s, g: np.minimum(s, g) / s),
    ("v", lambda s, g: np.minimum(s, g) / (s + 1.0)),
    ("x0", lambda s, g: np.minimum(s, g)),
])
def test_min_snr_weights_are_hang_et_al_per_target(target, closed_form):
  for sched in (COSINE, LINEAR):
    got = diffusion.loss_weight(sched, EVERY_T, target, "min_snr", snr_gamma=5.0)
    np.testing.assert_allclose(got, closed_form(snr64(sched), 5.0), rtol=2e-4)
  assert float(diffusion.loss_weight(COSINE, EVERY_T, "eps", "none").std()) == 0.0


@pytest.mark.parametrize("weighting", ["min_snr", "edm"])
def test_each_target_weighs_the_same_x0_error_alike(weighting):
  """One x_0 error, seen as each target's error: the weighted MSEs agree,
  min(SNR, gamma) |e|^2 (min-SNR) or (SNR + 1 / sigma_data^2) |e|^2 (EDM).
  A weight written for the wrong target breaks this."""
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.uniform(-1, 1, (6, 4, 4, 3)), jnp.float32)
  error = jnp.asarray(rng.normal(0, 0.1, x0.shape), jnp.float32)
  noise = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
  t = jnp.asarray([5, 60, 200, 500, 800, 950])
  x_t = diffusion.q_sample(COSINE, x0, t, noise)
  x0_hat = x0 + error
  predictions = {"eps": diffusion.eps_from_x0(COSINE, x_t, t, x0_hat), "x0": x0_hat,
                 "v": diffusion.v_from_x0_eps(COSINE, x0_hat,
                                              diffusion.eps_from_x0(COSINE, x_t, t, x0_hat), t)}
  targets = [p for p in predictions if not (weighting == "edm" and p == "eps")]
  snr_t = snr64(COSINE)[np.asarray(t)]
  x0_weight = np.minimum(snr_t, 5.0) if weighting == "min_snr" else snr_t + 1 / 0.5 ** 2
  want = x0_weight * np.mean(np.asarray(error, np.float64) ** 2, axis=(1, 2, 3))
  for target in targets:
    losses = diffusion.training_losses(
        COSINE, predictions[target], x0, t, noise, parameterization=target,
        mse_weight=diffusion.loss_weight(COSINE, t, target, weighting))
    np.testing.assert_allclose(losses["loss"], want, rtol=2e-3, err_msg=target)


def test_edm_weighting_is_one_for_v_at_unit_sigma_data_and_refused_for_eps():
  np.testing.assert_allclose(diffusion.loss_weight(COSINE, EVERY_T, "v", "edm", sigma_data=1.0),
                             1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="'edm' loss weighting needs a v or x0 model"):
    diffusion.loss_weight(COSINE, EVERY_T, "eps", "edm")
  config = config_lib.base_config()
  config.diffusion.loss_weighting = "edm"
  with pytest.raises(ValueError, match="loss_weighting 'edm' needs parameterization"):
    config_lib.check(config)


def test_log_normal_timesteps_put_edm_mass_on_the_discrete_levels():
  """P(t) is the normal mass of ln sigma's cell around t: the mean and std of
  ln sigma under it are EDM's (-1.2, 1.2) to discretisation error, and the
  sampler draws t at those frequencies."""
  probs = diffusion.log_normal_probabilities(COSINE)
  assert probs.shape == (T,) and abs(probs.sum() - 1) < 1e-6 and probs.min() >= 0
  levels = diffusion.log_sigma(COSINE)
  mean = np.sum(probs * levels)
  std = math.sqrt(np.sum(probs * (levels - mean) ** 2))
  assert abs(mean + 1.2) < 0.02 and abs(std - 1.2) < 0.02, (mean, std)
  # The peak sits where ln sigma = -1.2, the mode of the density in ln sigma
  # divided by the cell widths; check the median instead: ln sigma = -1.2.
  median_t = int(np.searchsorted(np.cumsum(probs), 0.5))
  assert abs(levels[median_t] + 1.2) < 0.02
  t, weights = diffusion.sample_timesteps(jax.random.PRNGKey(0), 200_000, T,
                                          probabilities=jnp.asarray(probs))
  assert float(weights.min()) == float(weights.max()) == 1.0
  counts = np.bincount(np.asarray(t), minlength=T) / 200_000
  coarse = lambda p: p.reshape(20, 50).sum(-1)  # noqa: E731
  np.testing.assert_allclose(coarse(counts), coarse(probs), atol=4e-3)


@pytest.mark.parametrize("sampler", ["uniform", "log_normal"])
def test_the_train_step_draws_t_from_the_configured_distribution(sampler):
  """A model eps_hat = x_t on x_0 = 0 has loss (sqrt(1 - abar_t) - 1)^2 eps^2,
  so the step's mean loss is that factor's mean under the t the step draws:
  0.48 under the log-normal, 0.22 uniform. A step that ignores the option
  (as the first recipe runs did) gives the uniform figure for both."""
  spec = types.SimpleNamespace(
      schedule=COSINE, parameterization="eps", variance="fixed_small",
      training_cond=lambda batch, rng, dropout: {},
      apply=lambda params, x_t, t, rngs=None, train=True: params["w"] * x_t)
  step = jax.jit(steps.make_diffusion_step(spec, optax.sgd(0.0), timestep_sampler=sampler))
  state = state_lib.init_state({"w": jnp.ones(())}, optax.sgd(0.0), (), jax.random.PRNGKey(0))
  _, logged = step(state, {"image": jnp.zeros((4096, 4, 4, 1))})
  abar = np.asarray(COSINE.alphas_cumprod, np.float64)
  probs = (diffusion.log_normal_probabilities(COSINE) if sampler == "log_normal"
           else np.full(T, 1.0 / T))
  want = np.sum(probs * (np.sqrt(1.0 - abar) - 1.0) ** 2)
  assert abs(float(logged["loss"]) - want) < 0.015, (float(logged["loss"]), want)  # 3 s.e.


def test_zero_terminal_snr_rescales_sqrt_abar_affinely():
  """Lin et al.: sqrt(abar) shifted to end at 0 and scaled to start where it
  did; the last beta is 1, and a v prediction still gives x_0 (and eps = x_t)."""
  zero = schedules.make_schedule("linear", T, zero_terminal_snr=True)
  old = np.sqrt(np.cumprod(1 - schedules.linear_betas(T)))
  want = (old - old[-1]) * old[0] / (old[0] - old[-1])
  np.testing.assert_allclose(zero.sqrt_alphas_cumprod, want, rtol=1e-5, atol=1e-7)
  assert float(zero.alphas_cumprod[-1]) == 0.0 and float(zero.betas[-1]) == 1.0
  x_t = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 4, 3)), jnp.float32)
  v = -jnp.ones_like(x_t) * 0.3
  last = jnp.full((2,), T - 1)
  np.testing.assert_allclose(diffusion.x0_from_v(zero, x_t, last, v), 0.3, rtol=1e-6)
  out = diffusion.p_mean_variance(zero, v, x_t, last, parameterization="v")
  assert np.isfinite(np.asarray(out.mean)).all()
  np.testing.assert_allclose(out.pred_eps, x_t, rtol=1e-6)
  for respaced in (schedules.respace(zero, "50"),):
    assert float(respaced.alphas_cumprod[-1]) == 0.0
  for target in ("v", "x0"):  # min-SNR keeps training the last step (min(0, gamma) = 0)
    weights = diffusion.loss_weight(zero, jnp.asarray([T - 2, T - 1]), target, "min_snr")
    assert float(weights[1]) == 1.0 and 0.0 < float(weights[0]) < 1e-3, (target, weights)
  config = config_lib.base_config()
  config.diffusion.zero_terminal_snr = True
  with pytest.raises(ValueError, match="zero_terminal_snr needs parameterization"):
    config_lib.check(config)


def test_learning_rate_schedules_warm_up_then_decay_to_zero():
  def schedule(kind):
    c = ml_collections.ConfigDict({"lr": 1e-3, "warmup_steps": 100, "schedule": kind})
    return optimizer.learning_rate_schedule(c, num_steps=1100)
  for kind in ("constant", "cosine", "linear"):
    assert float(schedule(kind)(50)) == pytest.approx(5e-4)
    assert float(schedule(kind)(100)) == pytest.approx(1e-3)
  assert float(schedule("constant")(1100)) == pytest.approx(1e-3)
  # Half-way through the decay both are at half the rate; a quarter in,
  # cosine is at (1 + cos(pi / 4)) / 2, linear at 3 / 4.
  assert float(schedule("cosine")(600)) == pytest.approx(5e-4, rel=1e-4)
  assert float(schedule("linear")(600)) == pytest.approx(5e-4, rel=1e-4)
  assert float(schedule("cosine")(350)) == pytest.approx(1e-3 * (1 + math.cos(math.pi / 4)) / 2,
                                                         rel=1e-4)
  assert float(schedule("linear")(350)) == pytest.approx(7.5e-4, rel=1e-4)
  for kind in ("cosine", "linear"):
    assert abs(float(schedule(kind)(1100))) < 1e-9


@pytest.mark.parametrize("sigma_rel", [0.05, 0.10])
def test_power_ema_is_edm2s_profile(sigma_rel):
  """gamma solves EDM2's sigma_rel equation, and after n updates the average
  weighs update k by (k^(g+1) - (k-1)^(g+1)) / n^(g+1)."""
  gamma = steps.power_ema_exponent(sigma_rel)
  assert math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))) == pytest.approx(sigma_rel)
  n = 30
  updates = np.eye(n, dtype=np.float32)  # update k sets the params to e_k
  key = "power_" + f"{sigma_rel:g}"
  ema = {key: jnp.zeros(n)}
  for step in range(n):
    ema = steps.update_ema(ema, jnp.asarray(updates[step]), jnp.asarray(step), warmup=True)
  k = np.arange(1, n + 1, dtype=np.float64)
  want = (k ** (gamma + 1) - (k - 1) ** (gamma + 1)) / n ** (gamma + 1)
  np.testing.assert_allclose(ema[key], want, rtol=2e-4, atol=1e-7)
  for n in (10 ** 4, 10 ** 6):  # the update's weight keeps its precision late in a run
    exact = -math.expm1((gamma + 1) * math.log1p(-1 / n))
    got = float(steps.power_ema_weight(gamma, jnp.asarray(n - 1)))
    assert got == pytest.approx(exact, rel=1e-4), (n, got, exact)


def test_roughness_flags_noise_and_not_scenes():
  """The residual-noise measure: a flat image scores 0, a checkerboard 2,
  Gaussian noise of std s about 2 s / sqrt(pi) * sqrt(2) (the mean |a - b| of
  two independent normals); uint8 images are rescaled to [-1, 1]."""
  flat = np.zeros((1, 8, 8, 3), np.float32)
  checker = np.where((np.indices((8, 8)).sum(0) % 2)[None, ..., None] == 0, 1.0, -1.0)
  checker = np.repeat(checker, 3, -1)
  noise = np.random.default_rng(0).normal(0, 0.3, (1, 64, 64, 3))
  got = metrics.roughness(np.concatenate([flat, checker]))
  np.testing.assert_allclose(got, [0.0, 2.0])
  assert metrics.roughness(noise)[0] == pytest.approx(2 * 0.3 / math.sqrt(math.pi), rel=0.02)
  as_uint8 = ((checker + 1) * 127.5).astype(np.uint8)
  np.testing.assert_allclose(metrics.roughness(as_uint8), [2.0])
  assert metrics.threshold_of(np.concatenate([flat, 0.1 * checker])) == pytest.approx(0.4)
  assert metrics.residual_noise_fraction(np.concatenate([flat, checker]), 0.4) == 0.5


# --------------------------------------------- every path takes each target --

MIXTURE = oracles.GaussianMixture(weights=[0.5, 0.5], means=[[1.0, 1.0], [-1.0, 0.0]],
                                  stds=[0.2, 0.3])


def _paths(base, target):
  """name -> run(model_fn) for every way the library turns the output of a
  model predicting `target` into samples; each returns an array."""
  fast = schedules.respace(base, "20")
  y = jnp.asarray(np.arange(32) % 2)
  key = jax.random.key(0)
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 4, 4, 1)), jnp.float32)
  mask = jnp.zeros((4, 4, 4, 1)).at[:, :, :2].set(1.0)
  known = sampling.Known(images, mask)
  classifier = guidance.classifier(MIXTURE.class_log_prob_fn(base), 2.0)
  p = {"parameterization": target}
  return {
      "ddpm": lambda m: sampling.sample(m, fast, (32, 2), key, method="ddpm", y=y, **p),
      "ddim eta 0": lambda m: sampling.sample(m, fast, (32, 2), key, method="ddim", y=y, **p),
      "ddim eta 0.5, unclipped": lambda m: sampling.sample(
          m, fast, (32, 2), key, method="ddim", eta=0.5, clip_denoised=False, y=y, **p),
      "cfg 3": lambda m: sampling.sample(guidance.classifier_free(m, 3.0, null_cond={"y": 2}),
                                         fast, (32, 2), key, method="ddim", y=y, **p),
      "classifier guidance": lambda m: sampling.sample(m, fast, (32, 2), key, method="ddpm",
                                                       cond_fn=classifier, y=y, **p),
      "ddim inversion": lambda m: sampling.ddim_encode(m, fast, MIXTURE.sample(key, 32)[0],
                                                       y=y, **p),
      "inpainting, x_t": lambda m: sampling.sample(m, fast, images.shape, key, method="ddpm",
                                                   known=known, known_mode="x_t", **p),
      "inpainting, x_0 paste, RePaint": lambda m: sampling.sample(
          m, fast, images.shape, key, method="ddim", known=known, known_mode="x0",
          resample=2, jump=5, **p),
      "SDEdit": lambda m: sampling.sample(m, fast, images.shape, key, method="ddim",
                                          init_image=images, strength=0.5, **p),
  }


def test_every_sampling_path_takes_each_prediction_target():
  """The exact denoiser, outputting v or x_0 instead of eps: every sampler,
  guidance and editing path draws what it draws from the eps model."""
  base = schedules.make_schedule("cosine", 1000)
  image_eps = oracles.finite_set_model_fn(
      jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (3, 4, 4, 1)), jnp.float32), base)
  mixture_eps = MIXTURE.model_fn(base)

  def eps_model(x, t, y=None):
    return image_eps(x, t) if x.ndim == 4 else mixture_eps(x, t, y)
  want = {name: np.asarray(run(eps_model)) for name, run in _paths(base, "eps").items()}
  for target in ("v", "x0"):
    other = oracles.as_prediction(eps_model, base, target)
    for name, run in _paths(base, target).items():
      np.testing.assert_allclose(np.asarray(run(other)), want[name], atol=2e-3,
                                 err_msg=f"{name} with a {target} model")


@pytest.mark.parametrize("method", ["ddim", "dpmpp_2m", "heun"])
def test_guidance_on_a_zero_terminal_snr_schedule_stays_finite(method):
  """At abar_T = 0 x_0 cannot be had from the guided eps (inf * x - inf * eps
  was NaN in every sample); the shift leaves x_0 unchanged there. A zero
  guide's samples equal the unguided ones."""
  base = schedules.make_schedule("linear", T, zero_terminal_snr=True)
  model = MIXTURE.model_fn(base, "v")
  np.testing.assert_allclose(  # the exact v is the eps model's v wherever abar > 0
      model(jnp.ones((2, 2)), jnp.array([500, 900])),
      oracles.as_prediction(MIXTURE.model_fn(base), base, "v")(jnp.ones((2, 2)),
                                                               jnp.array([500, 900])),
      atol=1e-5)
  schedule = schedules.respace(base, "10")

  def draw(**guide):
    return np.asarray(sampling.sample(model, schedule, (64, 2), jax.random.key(0), method=method,
                                      parameterization="v", clip_denoised=False, **guide))
  guided = draw(cond_fn=lambda x, t, **cond: jnp.zeros_like(x))
  assert np.all(np.isfinite(guided))
  np.testing.assert_allclose(guided, draw(), atol=1e-5)
