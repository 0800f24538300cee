"""The high-order solvers against the exact denoiser of a Gaussian mixture:
their order of convergence to the probability-flow ODE's solution, the
sample distribution in few steps, k-diffusion's Euler and Euler ancestral
as DDIM at eta 0 and 1, and what composes or is refused."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_sampling import MIXTURE, N, assert_matches_mixture

from diffusion_jax import config_lib, oracles, sampling, schedules, solvers

SECOND_ORDER = ("dpmpp_2m", "dpmpp_3m", "unipc", "heun")


@pytest.fixture(scope="module", params=["cosine", "linear"])
def ode(request):
  """(schedule, exact eps model, x_T, the ODE's solution from x_T): the
  reference is Heun over all 1000 steps (DPM-Solver++ 3M there agrees to 6e-5)."""
  base = schedules.make_schedule(request.param, 1000)
  model = MIXTURE.model_fn(base)
  x_T = jax.random.normal(jax.random.key(0), (256, 2))
  reference = sampling.sample(model, base, (256, 2), jax.random.key(1), method="heun",
                              x_T=x_T, clip_denoised=False)
  return base, model, x_T, np.asarray(reference)


def global_errors(ode, method, steps=(20, 40, 80)):
  base, model, x_T, reference = ode
  errors = []
  for n in steps:
    x = sampling.sample(model, schedules.respace(base, str(n)), (256, 2), jax.random.key(1),
                        method=method, x_T=x_T, clip_denoised=False)
    errors.append(float(np.sqrt(np.mean((np.asarray(x) - reference) ** 2))))
  slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
  return errors, slope


def test_ddim_converges_at_first_order(ode):
  _, slope = global_errors(ode, "ddim")
  assert 0.8 < slope < 1.3, slope


@pytest.mark.parametrize("method", SECOND_ORDER)
def test_second_order_solvers_converge_at_second_order(ode, method):
  """The global error against the ODE's solution falls as steps^-p with p
  near 2 (DDIM: 1). A wrong history coefficient, or no corrector in Heun,
  leaves p near 1; at 80 steps they are 3-20 times closer than DDIM."""
  errors, slope = global_errors(ode, method)
  ddim, _ = global_errors(ode, "ddim")
  assert slope > 1.5, (errors, slope)
  assert errors[-1] < 0.35 * ddim[-1], (errors, ddim)


@pytest.mark.parametrize("method,steps", [("dpmpp_2m", "30"), ("dpmpp_3m", "25"),
                                          ("dpmpp_2m_sde", "30"), ("unipc", "25"),
                                          ("heun", "logsnr16")])
def test_solvers_reproduce_the_mixture_in_few_steps(method, steps):
  """25-30 evaluations reproduce the mixture (its components' stds within
  a few standard errors). At 10 uniformly spaced steps no sampler does yet,
  DDIM included (std ratios 0.74-0.88): the last step, into t = 0, is first
  order and long. Heun spends two evaluations a step, so at its 16 steps
  (29 evaluations) the uniform spacing's last step still shrinks the stds
  (0.83); uniform in log-SNR it does not."""
  base = schedules.make_schedule("cosine", 1000)
  x = sampling.sample(MIXTURE.model_fn(base), schedules.respace(base, steps), (N, 2),
                      jax.random.key(3), method=method, clip_denoised=False)
  assert_matches_mixture(x)


def test_euler_is_ddim_at_eta_0_and_euler_ancestral_at_eta_1():
  """k-diffusion's samplers in the variance-exploding variables x / alpha and
  sigma / alpha, written out here, on the same integer timesteps and noise:
  Euler is DDIM at eta 0, Euler ancestral DDIM at eta 1."""
  base = schedules.make_schedule("linear", 1000)
  fast = schedules.respace(base, "12")
  model = MIXTURE.model_fn(base)
  key = jax.random.key(4)
  abar = np.asarray(fast.alphas_cumprod, np.float64)
  sigmas = np.append(np.sqrt((1 - abar) / abar)[::-1], 0.0)  # the ODE's noise levels
  init_rng, loop_rng = jax.random.split(key)
  for method, ancestral in (("euler", False), ("euler_ancestral", True)):
    x = np.asarray(jax.random.normal(init_rng, (64, 2)), np.float64) / np.sqrt(abar[-1])
    for k, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
      index = fast.num_timesteps - 1 - k
      t = jnp.full((64,), int(fast.timesteps[index]))
      eps = np.asarray(model(jnp.asarray(x * np.sqrt(abar[index]), jnp.float32), t))
      up = (np.sqrt(sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2)
            if ancestral else 0.0)
      down = np.sqrt(sigma_next ** 2 - up ** 2)
      x = x + (down - sigma) * eps
      if up > 0:  # the sampler's step noise, scaled to x / alpha
        x = x + up * np.asarray(jax.random.normal(jax.random.fold_in(loop_rng, index), (64, 2)))
    ours = sampling.sample(model, fast, (64, 2), key, method=method, clip_denoised=False)
    np.testing.assert_allclose(ours, x, atol=2e-4, err_msg=method)


def test_multistep_solvers_compose_with_inpainting_and_edits_and_refuse_repaint():
  """x_t replacement and SDEdit with DPM-Solver++ 2M: the ideal denoiser
  of a finite set restores the consistent images; RePaint's jumps back are
  refused in one line (a jump would break the solver's history)."""
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 6, 6, 1)), jnp.float32)
  base = schedules.make_schedule("cosine", 1000)
  fast = schedules.respace(base, "20")
  model = oracles.finite_set_model_fn(images, base)
  mask = jnp.zeros((4, 6, 6, 1)).at[:, :, :3].set(1.0)
  known = sampling.Known(images, mask)
  out = sampling.sample(model, fast, images.shape, jax.random.key(0), method="dpmpp_2m",
                        known=known)
  error = np.abs(np.asarray(out) - np.asarray(images)).reshape(4, -1).max(1)
  assert np.sum(error < 0.02) >= 3, error
  edited = sampling.sample(model, fast, images.shape, jax.random.key(0), method="dpmpp_2m",
                           init_image=images, strength=0.3)
  np.testing.assert_allclose(edited, images, atol=0.02)
  with pytest.raises(ValueError, match="RePaint's jumps back .* need a one-step sampler"):
    sampling.sample(model, fast, images.shape, jax.random.key(0), method="dpmpp_3m",
                    known=known, resample=3)


def test_the_config_offers_every_method():
  assert tuple(config_lib._CHOICES["sample.method"]) == sampling.METHODS


def test_spacings_by_noise_level_and_explicit_timesteps():
  """logsnrN: the kept steps' lambdas are uniform from t = 0 to -5.1 (each
  within one timestep's lambda gap of its target), then T - 1; karrasN:
  sigma / alpha follows the rho = 7 ramp up to 80; an explicit list is kept
  as given; too many levels for T is a one-line error."""
  base = schedules.make_schedule("cosine", 1000)
  abar = np.asarray(base.alphas_cumprod, np.float64)
  lam = 0.5 * (np.log(abar) - np.log1p(-abar))
  kept = schedules.space_timesteps(1000, "logsnr10", base.alphas_cumprod)
  assert len(kept) == 10 and kept[0] == 0 and kept[-1] == 999
  targets = np.linspace(lam[0], schedules.LAMBDA_MIN, 10)
  gaps = np.abs(np.diff(lam))
  for t, target in zip(kept[:-1], targets[:-1]):
    assert abs(lam[t] - target) <= gaps[max(t - 1, 0)] + gaps[min(t, 998)], (t, target)
  kept = schedules.space_timesteps(1000, "karras8", base.alphas_cumprod)
  sigma = np.exp(-lam)
  ramp = (sigma[0] ** (1 / 7) + np.linspace(0, 1, 8) * (80 ** (1 / 7) - sigma[0] ** (1 / 7))) ** 7
  np.testing.assert_allclose(np.log(sigma[kept[:-1]]), np.log(ramp[:-1]), atol=0.05)
  assert kept[-1] == 999
  fast = schedules.respace(base, "timesteps:999,400,0")
  np.testing.assert_array_equal(fast.timesteps, [0, 400, 999])
  np.testing.assert_allclose(fast.alphas_cumprod, abar[[0, 400, 999]], rtol=1e-6)
  with pytest.raises(ValueError, match="map to fewer distinct timesteps"):
    schedules.space_timesteps(1000, "logsnr900", base.alphas_cumprod)
  with pytest.raises(ValueError, match="spaces by noise level: give the schedule"):
    schedules.space_timesteps(1000, "karras10")


PARITY = pathlib.Path(__file__).parent / "data" / "diffusers_solvers.npz"


# Each case's bound on the largest difference, relative to the largest value:
# 1e-3 where diffusers visits t = 999 of the cosine schedule (abar 2.4e-9) in
# float32, 1e-5 elsewhere, with three float32 exceptions, measured:
# - Euler ancestral, 10 steps of the cosine schedule: from sigma 20,291 in
#   x / alpha, diffusers' own float32 run is 7.1e-4 from the same run in
#   float64. Ours: 6.6e-4, and 1.0e-3 under the suite's XLA flags.
# - Heun on the linear schedule: diffusers' alphas_cumprod is a float32
#   cumprod (relative error ~3e-5 at t = 999), and Heun's sigma steps carry
#   it. Ours: 2.0e-5, and 8e-7 from a float64 Heun on our schedule.
# - DPM-Solver++ 2M SDE, 20 steps of the linear one: diffusers' float32 and
#   float64 runs differ by 1.7e-5 (the mixture's last steps amplify
#   rounding). Ours: 4e-5.
PARITY_BOUNDS = {"cosine": 1e-3, "linear": 1e-5, ("cosine", "euler_ancestral", 10): 2e-3,
                 ("linear", "heun", 10): 1e-4, ("linear", "heun", 28): 1e-4,
                 ("linear", "dpmpp_2m_sde", 20): 1e-4}


def _diffusers_case(data, kind, method, steps, monkeypatch=None, heun_ends=False):
  """Our x_0 at diffusers' timesteps from its x_T (its noise is ours with key 0)."""
  monkeypatch.setattr(sampling, "HEUN_CORRECTS_ENDS", heun_ends)
  base = schedules.make_schedule(kind, 1000)
  timesteps = data[f"{kind}/{method}/{steps}/timesteps"]
  fast = schedules.respace(base, "timesteps:" + ",".join(str(int(t)) for t in timesteps))
  got = sampling.sample(MIXTURE.model_fn(base), fast, data["x_T"].shape, jax.random.key(0),
                        method=method, x_T=jnp.asarray(data["x_T"]), clip_denoised=False)
  want = data[f"{kind}/{method}/{steps}/x0"]
  return np.abs(np.asarray(got) - want).max() / np.abs(want).max()


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_solvers_reproduce_diffusers(kind, monkeypatch):
  """DPMSolverMultistepScheduler (dpmsolver++, orders 2 and 3, and its 2M
  SDE), UniPCMultistepScheduler (bh2), HeunDiscreteScheduler and
  EulerAncestralDiscreteScheduler from one x_T at diffusers' own timesteps
  (tests/data/diffusers_parity.py; the stochastic ones given our noise).
  Measured: 1.8e-4 at most on the cosine schedule, 4e-6 on the linear one,
  but for the three float32 cases in PARITY_BOUNDS.

  Heun is diffusers' setting (HEUN_CORRECTS_ENDS): ours, Euler at the first
  and the last real step, lands elsewhere, which shows the switch is real."""
  data = np.load(PARITY)
  for method in ("dpmpp_2m", "dpmpp_3m", "unipc", "dpmpp_2m_sde", "heun", "euler_ancestral"):
    for steps in (10, 28) if method in ("heun", "euler_ancestral") else (10, 20):
      error = _diffusers_case(data, kind, method, steps, monkeypatch, heun_ends=True)
      bound = PARITY_BOUNDS.get((kind, method, steps), PARITY_BOUNDS[kind])
      assert error < bound, (method, steps, error)
  assert _diffusers_case(data, kind, "heun", 10, monkeypatch, heun_ends=False) > 1e-2


def test_a_bundle_samples_with_a_solver_and_cfg_compiled_once(trained_workdir, monkeypatch):
  """`Bundle.sample(method="dpmpp_2m")` with classifier-free guidance: a new
  scale and new labels reuse the compiled program (no new trace of the
  network), and another solver compiles its own."""
  from diffusion_jax.inference import loading
  from diffusion_jax.inference.spec import ModelSpec
  bundle = loading.load(trained_workdir)
  traces = []
  apply = ModelSpec.apply
  monkeypatch.setattr(ModelSpec, "apply",
                      lambda *args, **kwargs: (traces.append(1), apply(*args, **kwargs))[1])
  first = bundle.sample(labels=[0, 1], method="dpmpp_2m", steps="4", guidance_scale=2.0)
  traced = len(traces)
  again = bundle.sample(labels=[2, 3], method="dpmpp_2m", steps="4", guidance_scale=4.0,
                        seed=1)
  assert len(traces) == traced > 0
  assert first.shape == again.shape == (2, 16, 16, 3)
  assert np.all(np.abs(again) <= 1) and not np.allclose(first, again)
  bundle.sample(labels=[0, 1], method="unipc", steps="4", guidance_scale=2.0)
  assert len(traces) > traced


@pytest.mark.parametrize("method", ["dpmpp_2m", "unipc", "heun"])
def test_solvers_with_the_exact_classifier_sample_its_class(method):
  """Classifier guidance composes with the solvers as a shift of the guided
  eps: at scale 1 with the exact posterior p(y | x_t), the unconditional
  model's samples are component y's (guidance applied twice, or to the
  unguided prediction in the history, leaves them elsewhere)."""
  from diffusion_jax import guidance
  base = schedules.make_schedule("cosine", 1000)
  model = MIXTURE.model_fn(base)
  classifier = guidance.classifier(MIXTURE.class_log_prob_fn(base), scale=1.0)
  x = sampling.sample(lambda x, t, **unused: model(x, t), schedules.respace(base, "30"),
                      (N, 2), jax.random.key(14), method=method, clip_denoised=False,
                      cond_fn=classifier, y=jnp.full((N,), 2))
  assert_matches_mixture(x, np.eye(3)[2])


@pytest.mark.parametrize("method", ["ddim", "dpmpp_2m", "unipc", "heun"])
def test_the_guided_data_prediction_is_clipped_like_the_models_own(method):
  """With clipping on, the guided x_0 is clipped as the model's own is.
  From the cosine schedule's t = 999 the shift of x_0 is (1 - abar) /
  sqrt(abar) = 20,000 times the classifier's gradient: unclipped (as
  guided-diffusion's condition_score leaves it), a gradient of 0.01 put
  x_0 at 200 and every solver carried it on; on `shapes-classes` with
  `shapes-classifier` at scale 3, 2M at 20 steps drew saturated colour
  fields (class accuracy 0.17; clipped: 0.94, docs/samplers.md)."""
  base = schedules.make_schedule("cosine", 1000)
  model = MIXTURE.model_fn(base)
  push = lambda x, t, **unused: jnp.full_like(x, 0.01)  # noqa: E731
  _, path = sampling.sample(lambda x, t, **unused: model(x, t), schedules.respace(base, "10"),
                            (64, 2), jax.random.key(3), method=method, cond_fn=push,
                            return_trajectory=True)
  assert np.abs(np.asarray(path["pred_x0"])).max() <= 1.0


@pytest.mark.parametrize("method,low,high", [("ddim", 1.8, 2.2), ("dpmpp_2m", 2.8, 3.2),
                                             ("dpmpp_3m", 3.3, 3.7)])
def test_one_step_from_the_exact_solution_errs_at_order_p_plus_1(method, low, high):
  """Local error: one step from the ODE's solution at t = 500, with history
  from the solution itself, against the solution one step lower, for steps
  of 10, 20 and 40 timesteps, falls at order p + 1 in the step: DDIM 2.01,
  2M 3.00 (a wrong history coefficient leaves 2). 3M, as diffusers and
  DPM-Solver write it, 3.45, not 4: its second difference D2 is h^2 m''/2
  and it takes phi_3 D2 where the exact integral has h^2 phi_3 m'' (twice
  D2 gives 3.90; without D2, 3.21). docs/samplers.md. The solution is Heun
  over all 1000 steps of the cosine schedule."""
  base = schedules.make_schedule("cosine", 1000)
  model = MIXTURE.model_fn(base)
  x_T = jax.random.normal(jax.random.key(0), (256, 2))
  _, path = sampling.sample(model, base, (256, 2), jax.random.key(1), method="heun",
                            x_T=x_T, clip_denoised=False, return_trajectory=True)
  solution = {998 - k: x for k, x in enumerate(np.asarray(path["x"], np.float64))}  # by level
  solution[999] = np.asarray(x_T, np.float64)

  def data_prediction(t):
    abar = float(base.alphas_cumprod[t])
    x = jnp.asarray(solution[t], jnp.float32)
    eps = model(x, jnp.full((256,), t))
    return (x - np.sqrt(1.0 - abar) * eps) / np.sqrt(abar)

  def lam(t):
    abar = float(base.alphas_cumprod[t])
    return 0.5 * np.log(abar / (1.0 - abar))

  start, errors, strides = 500, [], (10, 20, 40)
  for d in strides:
    levels = [start - d, start, start + d, start + 2 * d]
    schedule = schedules.respace(base, "timesteps:" + ",".join(map(str, levels[::-1])))
    x = jnp.asarray(solution[start], jnp.float32)
    x0 = data_prediction(start)
    if method == "ddim":
      abar_next = float(base.alphas_cumprod[start - d])
      eps = (x - np.sqrt(float(base.alphas_cumprod[start])) * x0) / np.sqrt(
          1.0 - float(base.alphas_cumprod[start]))
      x_next = np.sqrt(abar_next) * x0 + np.sqrt(1.0 - abar_next) * eps
    else:
      past = solvers.History.empty((256, 2))._replace(
          x0=jnp.stack([data_prediction(start + d), data_prediction(start + 2 * d)]),
          lam=jnp.asarray([lam(start + d), lam(start + 2 * d)], jnp.float32),
          count=jnp.asarray(2, jnp.int32))
      order = solvers.MULTISTEP[method]
      x_next, _ = solvers.dpmpp_step(schedule, x, x0, 1, past, order, num_steps=100)
    errors.append(float(np.sqrt(np.mean((np.asarray(x_next) - solution[start - d]) ** 2))))
  slope = np.polyfit(np.log(strides), np.log(errors), 1)[0]
  assert low < slope < high, (errors, slope)



def test_unipc_keeps_the_pasted_known_pixels_through_its_corrector():
  """UniPC's corrector rebuilds x_t from its history; with x_t replacement
  the pasted known pixels must survive it (without `keep`, a paste changed
  nothing: found in review). The unknown pixels are the corrector's alone."""
  base = schedules.respace(schedules.make_schedule("cosine", 1000), "20")
  rng = np.random.default_rng(0)
  x, x0, m0, m1, before = (jnp.asarray(rng.normal(size=(2, 4, 4, 1)), jnp.float32)
                           for _ in range(5))
  history = solvers.History(jnp.stack([m0, m1]), jnp.asarray([-2.0, -3.0]), jnp.asarray(2),
                            before, jnp.asarray(2))
  keep = jnp.zeros((2, 4, 4, 1)).at[:, :2].set(1.0)
  pasted = x + 100.0 * keep

  def step(state, mask):
    return np.asarray(solvers.unipc_step(base, state, x0, 10, history, 20, mask)[0])
  np.testing.assert_array_equal(step(x, None), step(pasted, None))  # the corrector's own x
  with_keep, pasted_keep = step(x, keep), step(pasted, keep)
  np.testing.assert_array_equal(with_keep[:, 2:], pasted_keep[:, 2:])
  assert np.abs(with_keep[:, :2] - pasted_keep[:, :2]).min() > 1.0
