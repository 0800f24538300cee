"""The samplers against closed-form oracles (TESTING.md section 1).

With the exact eps* of a Gaussian mixture as the model, every sampler must
reproduce the mixture; with its exact noisy-classifier posterior, guidance
must reproduce the class-conditional distribution.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from diffusion_jax import diffusion, guidance, oracles, sampling, schedules

N = 4000  # samples per statistical check
MIXTURE = oracles.GaussianMixture(
    weights=[0.5, 0.3, 0.2], means=[[1.0, 1.0], [-1.0, 0.0], [0.5, -1.0]],
    stds=[0.15, 0.25, 0.2])
K = MIXTURE.num_components


@pytest.fixture(scope="module")
def base():
  return schedules.make_schedule("cosine", 1000)


@pytest.fixture(scope="module")
def model(base):
  """Exact eps*(x_t, t | y); y = K (the null label) or absent: unconditional."""
  return MIXTURE.model_fn(base)


@pytest.fixture(scope="module")
def unconditional(model):
  return lambda x, t, **unused: model(x, t)


@pytest.fixture(scope="module")
def exact_classifier(base):
  return guidance.classifier(MIXTURE.class_log_prob_fn(base), scale=1.0)


def nearest_component(x, mixture=MIXTURE):
  x = np.asarray(x).reshape(x.shape[0], -1)
  return np.argmin(((x[:, None] - mixture.means[None]) ** 2).sum(-1), axis=1)


def assert_matches_mixture(x, weights=MIXTURE.weights, mixture=MIXTURE):
  """Proportions, per-component means and stds within a few standard errors
  (plus a small allowance for the sampler's discretisation)."""
  x = np.asarray(x).reshape(x.shape[0], -1)
  labels = nearest_component(x, mixture)
  for k, weight in enumerate(weights):
    share = np.mean(labels == k)
    assert abs(share - weight) <= 5 * np.sqrt(weight * (1 - weight) / len(x)) + 0.01, (
        f"component {k}: share {share:.3f}, expected {weight:.3f}")
    if weight == 0:
      continue
    members = x[labels == k]
    std = mixture.stds[k]
    assert np.all(np.abs(members.mean(0) - mixture.means[k])
                  <= 5 * std / np.sqrt(len(members)) + 0.02), f"component {k} mean"
    ratio = members.std(0) / std
    assert np.all(np.abs(ratio - 1) <= 5 / np.sqrt(2 * len(members)) + 0.05), (
        f"component {k}: std ratio {ratio}")


def test_reference_draws_pass_the_check():
  """The statistical check itself accepts true samples and rejects others."""
  x, _ = MIXTURE.sample(jax.random.key(0), N)
  assert_matches_mixture(x)
  with pytest.raises(AssertionError):
    assert_matches_mixture(x * 1.15)
  with pytest.raises(AssertionError):
    assert_matches_mixture(x, weights=[0.4, 0.4, 0.2])


# ------------------------------------------------------- exact step checks --

def test_ddim_sigma_matches_formula(base):
  fast = schedules.respace(base, "ddim50")
  t = np.arange(50)
  abar = np.asarray(fast.alphas_cumprod, np.float64)
  prev = np.concatenate([[1.0], abar[:-1]])
  for eta in (0.0, 0.5, 1.0):
    expected = eta * np.sqrt((1 - prev) / (1 - abar)) * np.sqrt(1 - abar / prev)
    got = sampling.ddim_sigma(fast, t, eta, 2)[:, 0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("spec", ["1000", "ddim50"])
def test_ddim_with_eta_one_is_the_ancestral_step(base, model, spec):
  """DDIM(eta=1) and DDPM with beta~ are the same step (same noise)."""
  sched = schedules.respace(base, spec)
  n = sched.num_timesteps
  t = jnp.asarray(np.linspace(0, n - 1, 64).astype(np.int32))
  x = jax.random.normal(jax.random.key(1), (64, 2))
  rng = jax.random.key(2)
  opts = sampling.StepOptions(clip_denoised=False)
  ddim, _ = sampling.ddim_step(model, sched, x, t, rng, 1.0, opts)
  ddpm, _ = sampling.ddpm_step(model, sched, x, t, rng, opts)
  np.testing.assert_allclose(ddim, ddpm, atol=2e-5, rtol=1e-4)


def test_score_shift_with_exact_classifier_is_exact_conditional(base, model,
                                                                exact_classifier):
  """eps(x_t) - sqrt(1 - abar) grad log p(y | x_t) = eps(x_t | y), every t."""
  t = jnp.arange(1000)
  x = 1.5 * jax.random.normal(jax.random.key(3), (1000, 2))
  for label in range(K):
    y = jnp.full((1000,), label)
    shifted = sampling.shift_eps(base, model(x, t), x, t, exact_classifier(x, t, y=y))
    # float32: at t = 0 the gradient is ~1e2 and cancels against eps.
    np.testing.assert_allclose(shifted, model(x, t, y=y), rtol=1e-4, atol=5e-4)
  # On a respaced schedule the shift uses the respaced index, the model and
  # the classifier the original one.
  fast = schedules.respace(base, "ddim50")
  idx = jnp.arange(50)
  orig = fast.timesteps[idx]
  y = jnp.zeros((50,), jnp.int32)
  xs = x[:50]
  shifted = sampling.shift_eps(fast, model(xs, orig), xs, idx,
                               exact_classifier(xs, orig, y=y))
  np.testing.assert_allclose(shifted, model(xs, orig, y=y), rtol=1e-4, atol=5e-4)


def test_ddim_step_with_classifier_equals_conditional_step(base, unconditional,
                                                           model, exact_classifier):
  t = jnp.asarray(np.linspace(0, 999, 64).astype(np.int32))
  x = jax.random.normal(jax.random.key(4), (64, 2))
  y = jnp.full((64,), 1)
  guided_opts = sampling.StepOptions(clip_denoised=False, cond_fn=exact_classifier)
  guided, _ = sampling.ddim_step(unconditional, base, x, t, jax.random.key(0), 0.0,
                                 guided_opts, y=y)
  plain, _ = sampling.ddim_step(model, base, x, t, jax.random.key(0), 0.0,
                                sampling.StepOptions(clip_denoised=False), y=y)
  np.testing.assert_allclose(guided, plain, rtol=1e-4, atol=2e-4)


def test_ddpm_step_shifts_mean_by_variance_times_gradient(base, unconditional,
                                                          exact_classifier):
  t = jnp.asarray(np.linspace(1, 999, 32).astype(np.int32))
  x = jax.random.normal(jax.random.key(5), (32, 2))
  y = jnp.full((32,), 2)
  rng = jax.random.key(6)
  plain_opts = sampling.StepOptions(clip_denoised=False)
  plain, _ = sampling.ddpm_step(unconditional, base, x, t, rng, plain_opts, y=y)
  guided, _ = sampling.ddpm_step(
      unconditional, base, x, t, rng, plain_opts._replace(cond_fn=exact_classifier), y=y)
  variance = diffusion.extract(base.posterior_variance, t, 2)
  expected = variance * exact_classifier(x, base.timesteps[t], y=y)
  np.testing.assert_allclose(guided - plain, expected, rtol=1e-4, atol=1e-6)


# -------------------------------------------------------- sampled moments --

def test_ddpm_reproduces_the_mixture(base, model):
  x = sampling.sample(model, base, (N, 2), jax.random.key(10), clip_denoised=False)
  assert_matches_mixture(x)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_reproduces_the_mixture(base, model, eta):
  fast = schedules.respace(base, "250")
  x = sampling.sample(model, fast, (N, 2), jax.random.key(11), method="ddim",
                      eta=eta, clip_denoised=False)
  assert_matches_mixture(x)


def test_ddim_100_steps_on_image_shaped_data():
  """Any [B, ...] shape: a 16-D mixture sampled as [B, 4, 4, 1] images."""
  means = np.zeros((2, 16), np.float32)
  means[0, :8], means[1, 8:] = 0.5, -0.5
  mixture = oracles.GaussianMixture([0.7, 0.3], means, [0.2, 0.2])
  sched = schedules.make_schedule("linear", 1000)
  x = sampling.sample(mixture.model_fn(sched), schedules.respace(sched, "100"),
                      (N, 4, 4, 1), jax.random.key(12), method="ddim",
                      clip_denoised=False)
  assert x.shape == (N, 4, 4, 1)
  assert_matches_mixture(x, mixture.weights, mixture)


def test_conditional_eps_samples_its_component(base, model):
  fast = schedules.respace(base, "100")
  for label in range(K):
    x = sampling.sample(model, fast, (1000, 2), jax.random.key(13), method="ddim",
                        clip_denoised=False, y=jnp.full((1000,), label))
    weights = np.eye(K)[label]
    assert_matches_mixture(x, weights)


@pytest.mark.parametrize("method,spec", [("ddpm", "1000"), ("ddim", "250")])
def test_classifier_guidance_at_scale_one_samples_the_class(base, unconditional,
                                                            exact_classifier,
                                                            method, spec):
  """p(x) p(y | x) is exactly p(x | y): guided samples match component y."""
  y = jnp.full((N,), 2)
  x = sampling.sample(unconditional, schedules.respace(base, spec), (N, 2),
                      jax.random.key(14), method=method, clip_denoised=False,
                      cond_fn=exact_classifier, y=y)
  assert_matches_mixture(x, np.eye(K)[2])


def test_classifier_guidance_scales_add_up(base, unconditional, exact_classifier):
  x = jax.random.normal(jax.random.key(15), (8, 2))
  t = jnp.full((8,), 500)
  y = jnp.zeros((8,), jnp.int32)
  double = guidance.combine(exact_classifier, None, exact_classifier)
  scaled = guidance.classifier(MIXTURE.class_log_prob_fn(base), 2.0)
  np.testing.assert_allclose(double(x, t, y=y), scaled(x, t, y=y), rtol=1e-5)
  assert guidance.combine(None) is None


# -------------------------------------------------- classifier-free guidance --

def test_cfg_scale_one_is_conditional_and_zero_unconditional(base, model):
  fast = schedules.respace(base, "50")
  y = jnp.asarray(np.arange(256) % K)
  kwargs = dict(method="ddim", clip_denoised=False, y=y)
  rng = jax.random.key(16)
  conditional = sampling.sample(model, fast, (256, 2), rng, **kwargs)
  unconditional_x = sampling.sample(model, fast, (256, 2), rng, method="ddim",
                                    clip_denoised=False, y=jnp.full((256,), K))
  for scale, expected in [(1.0, conditional), (0.0, unconditional_x)]:
    cfg = guidance.classifier_free(model, scale, null_cond={"y": K})
    np.testing.assert_allclose(sampling.sample(cfg, fast, (256, 2), rng, **kwargs),
                               expected, atol=1e-4)
  assert not np.allclose(conditional, unconditional_x, atol=1e-2)


def test_cfg_guides_eps_only_and_keeps_conditional_variance(model):
  def learned_sigma_model(x, t, y):
    eps = model(x, t, y=y)
    return jnp.concatenate([eps, jnp.tanh(y.astype(jnp.float32))[:, None] * jnp.ones_like(x)], -1)

  x = jax.random.normal(jax.random.key(17), (6, 2))
  t = jnp.full((6,), 300)
  y = jnp.asarray([0, 1, 2, 0, 1, 2])
  out = guidance.classifier_free(learned_sigma_model, 3.0, {"y": K})(x, t, y=y)
  eps_c, eps_u = model(x, t, y=y), model(x, t, y=jnp.full((6,), K))
  np.testing.assert_allclose(out[:, :2], eps_u + 3.0 * (eps_c - eps_u), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[:, 2:], np.tanh(np.asarray(y, np.float32))[:, None]
                             * np.ones((6, 2)), rtol=1e-6)


def test_cfg_passes_other_conditioning_to_both_halves():
  seen = {}

  def spy(x, t, y, low_res):
    seen["y"], seen["low_res"] = y, low_res
    return x

  low_res = jnp.arange(4.0).reshape(2, 2)
  guidance.classifier_free(spy, 2.0, {"y": 7})(jnp.ones((2, 2)), jnp.zeros(2, int),
                                              y=jnp.array([1, 2]), low_res=low_res)
  np.testing.assert_array_equal(seen["y"], [1, 2, 7, 7])
  np.testing.assert_array_equal(seen["low_res"], jnp.concatenate([low_res, low_res]))
  with pytest.raises(ValueError, match="null_cond names \\['text'\\]"):
    guidance.classifier_free(spy, 2.0, {"text": 0})(jnp.ones((2, 2)), jnp.zeros(2, int),
                                                   y=jnp.array([1, 2]), low_res=low_res)


# ------------------------------------------------------------ DDIM, exactly --

def test_ddim_eta_zero_is_a_function_of_the_start_noise(base, model):
  fast = schedules.respace(base, "50")
  x_T = jax.random.normal(jax.random.key(18), (64, 2))
  a = sampling.sample(model, fast, (64, 2), jax.random.key(1), method="ddim", x_T=x_T)
  b = sampling.sample(model, fast, (64, 2), jax.random.key(2), method="ddim", x_T=x_T)
  np.testing.assert_array_equal(a, b)
  c = sampling.sample(model, fast, (64, 2), jax.random.key(1), method="ddim",
                      eta=1.0, x_T=x_T)
  d = sampling.sample(model, fast, (64, 2), jax.random.key(2), method="ddim",
                      eta=1.0, x_T=x_T)
  assert float(jnp.max(jnp.abs(c - d))) > 0.05  # eta > 0 really adds noise


def test_ddim_encode_decode_round_trip():
  """The ODE run forward then backward returns the input, and the error
  falls with the number of steps (first order)."""
  sched = schedules.make_schedule("linear", 1000)
  model = MIXTURE.model_fn(sched)
  x0, _ = MIXTURE.sample(jax.random.key(19), 512)
  errors = {}
  for spec in ("ddim50", "ddim250"):
    fast = schedules.respace(sched, spec)
    x_T = sampling.ddim_encode(model, fast, x0)
    assert 0.9 < float(jnp.std(x_T)) < 1.1  # encoded to (nearly) white noise
    back = sampling.sample(model, fast, x0.shape, jax.random.key(0), method="ddim",
                           x_T=x_T, clip_denoised=False)
    errors[spec] = np.asarray(jnp.max(jnp.abs(back - x0), axis=1))
  assert np.median(errors["ddim250"]) < 0.01
  assert np.quantile(errors["ddim250"], 0.95) < 0.03
  assert np.median(errors["ddim250"]) < 0.4 * np.median(errors["ddim50"])


def test_finite_training_set_is_returned_by_ddim(base):
  """With the ideal denoiser of 8 images, DDIM returns training images."""
  images = jax.random.uniform(jax.random.key(20), (8, 8, 8, 1), minval=-1, maxval=1)
  model = oracles.finite_set_model_fn(images, base)
  x = sampling.sample(model, schedules.respace(base, "ddim50"), (64, 8, 8, 1),
                      jax.random.key(21), method="ddim")
  distance = jnp.max(jnp.abs(x[:, None] - images[None]), axis=(2, 3, 4))  # [64, 8]
  assert float(jnp.max(jnp.min(distance, axis=1))) < 1e-3
  assert len(np.unique(np.asarray(jnp.argmin(distance, axis=1)))) >= 6


# ------------------------------------------------------------- the loop API --

def test_trajectory_and_progress_bar(base, model, capfd):
  fast = schedules.respace(base, "ddim10")
  x, traj = sampling.sample(model, fast, (4, 2), jax.random.key(22), method="ddim",
                            return_trajectory=True, progress=True)
  jax.effects_barrier()
  assert traj["x"].shape == (10, 4, 2) and traj["pred_x0"].shape == (10, 4, 2)
  np.testing.assert_array_equal(traj["x"][-1], x)
  np.testing.assert_allclose(traj["pred_x0"][-1], x, atol=1e-6)  # abar_prev = 1
  assert "sampling" in capfd.readouterr().err


def test_batch_sharded_sampling_equals_single_device(base, model):
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  sharding = NamedSharding(mesh, P("data"))
  fast = schedules.respace(base, "ddim20")
  x_T = jax.random.normal(jax.random.key(23), (64, 2))
  y = jnp.asarray(np.arange(64) % K)
  single = sampling.sample(model, fast, (64, 2), jax.random.key(0), method="ddim",
                           eta=0.5, x_T=x_T, y=y)
  sharded = sampling.sample(model, fast, (64, 2), jax.random.key(0), method="ddim",
                            eta=0.5, x_T=jax.device_put(x_T, sharding), sharding=sharding,
                            y=jax.device_put(y, sharding))
  assert sharded.sharding.is_equivalent_to(sharding, 2)
  np.testing.assert_allclose(sharded, single, atol=1e-5)


def test_bad_arguments_raise_clear_errors(base, model):
  with pytest.raises(ValueError, match="sampling method 'dpm_solver'"):
    sampling.sample(model, base, (2, 2), jax.random.key(0), method="dpm_solver")
  with pytest.raises(ValueError, match=r"x_T has shape \(3, 2\) but shape is \(2, 2\)"):
    sampling.sample(model, base, (2, 2), jax.random.key(0), x_T=jnp.zeros((3, 2)))
  with pytest.raises(ValueError, match="eta must be >= 0"):
    sampling.sample(model, base, (2, 2), jax.random.key(0), method="ddim", eta=-1)


def test_step_noise_is_the_keys_fold_in_of_t():
  """The compiled loop draws x_T from split(key)[0] and step t's noise from
  fold_in(split(key)[1], t): a hand-written loop gives the same samples, so
  a seed draws what it always drew (the main job's committed grid)."""
  images = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (4, 4, 4, 1)), jnp.float32)
  sched = schedules.respace(schedules.make_schedule("cosine", 1000), "6")
  model_fn = oracles.finite_set_model_fn(images, sched)
  key = jax.random.key(7)
  got = sampling.sample(model_fn, sched, (3, 4, 4, 1), key, method="ddpm")
  init_rng, loop_rng = jax.random.split(key)
  x = jax.random.normal(init_rng, (3, 4, 4, 1))
  for t in range(5, -1, -1):
    x, _ = sampling.ddpm_step(model_fn, sched, x, jnp.full((3,), t),
                              jax.random.fold_in(loop_rng, t))
  np.testing.assert_allclose(got, x, atol=1e-5)
