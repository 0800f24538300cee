"""The forward and reverse processes as pure functions of a `Schedule`.

Arrays are [B, ...] with the channel axis last; `t` is an int [B] array of
indices into the schedule passed in (for a respaced schedule, its own indices
0..N-1). Nothing here knows about networks: a model's output is an argument.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.schedules import Schedule

PARAMETERIZATIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large", "learned_range", "learned")
LEARNED_VARIANCES = ("learned_range", "learned")


def extract(values: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
  """values[t] as float32, reshaped to [B, 1, ..., 1] with `ndim` axes."""
  picked = jnp.asarray(values, jnp.float32)[t]
  return picked.reshape(picked.shape + (1,) * (ndim - picked.ndim))


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"unknown {name} {value!r}; choose one of {list(choices)}")


# ----------------------------------------------------------------- forward --

def q_mean_variance(sched: Schedule, x0: jax.Array, t: jax.Array):
  """Mean, variance and log variance of q(x_t | x_0)."""
  mean = extract(sched.sqrt_alphas_cumprod, t, x0.ndim) * x0
  var = extract(sched.sqrt_one_minus_alphas_cumprod, t, x0.ndim) ** 2
  log_var = extract(sched.log_one_minus_alphas_cumprod, t, x0.ndim)
  return mean, jnp.broadcast_to(var, x0.shape), jnp.broadcast_to(log_var, x0.shape)


def q_sample(sched: Schedule, x0: jax.Array, t: jax.Array,
             noise: jax.Array) -> jax.Array:
  """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise."""
  return (extract(sched.sqrt_alphas_cumprod, t, x0.ndim) * x0
          + extract(sched.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)


def q_posterior(sched: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array):
  """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0)."""
  mean = (extract(sched.posterior_mean_coef1, t, x_t.ndim) * x0
          + extract(sched.posterior_mean_coef2, t, x_t.ndim) * x_t)
  var = extract(sched.posterior_variance, t, x_t.ndim)
  log_var = extract(sched.posterior_log_variance_clipped, t, x_t.ndim)
  return mean, jnp.broadcast_to(var, x_t.shape), jnp.broadcast_to(log_var, x_t.shape)


# ------------------------------------------------------------- conversions --

def x0_from_eps(sched: Schedule, x_t, t, eps):
  """x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""
  return (extract(sched.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
          - extract(sched.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps)


def eps_from_x0(sched: Schedule, x_t, t, x0):
  """eps = (x_t - sqrt(abar) x_0) / sqrt(1 - abar); x_t itself where abar = 0
  (a zero-terminal-SNR schedule's last step)."""
  eps = ((extract(sched.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - x0)
         / extract(sched.sqrt_recipm1_alphas_cumprod, t, x_t.ndim))
  return jnp.where(extract(sched.alphas_cumprod, t, x_t.ndim) > 0, eps, x_t)


def v_from_x0_eps(sched: Schedule, x0, eps, t):
  """v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho, 2022)."""
  return (extract(sched.sqrt_alphas_cumprod, t, x0.ndim) * eps
          - extract(sched.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * x0)


def x0_from_v(sched: Schedule, x_t, t, v):
  """x_0 = sqrt(abar) x_t - sqrt(1 - abar) v."""
  return (extract(sched.sqrt_alphas_cumprod, t, x_t.ndim) * x_t
          - extract(sched.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * v)


def eps_from_v(sched: Schedule, x_t, t, v):
  """eps = sqrt(1 - abar) x_t + sqrt(abar) v."""
  return (extract(sched.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * x_t
          + extract(sched.sqrt_alphas_cumprod, t, x_t.ndim) * v)


def x0_from_prediction(sched: Schedule, prediction, x_t, t, parameterization):
  """x_0 implied by a network prediction of eps, x0 or v."""
  check_choice("parameterization", parameterization, PARAMETERIZATIONS)
  if parameterization == "eps":
    return x0_from_eps(sched, x_t, t, prediction)
  if parameterization == "v":
    return x0_from_v(sched, x_t, t, prediction)
  return prediction


def training_target(sched: Schedule, x0, noise, t, parameterization):
  """What the network should output for a given parameterization."""
  check_choice("parameterization", parameterization, PARAMETERIZATIONS)
  if parameterization == "eps":
    return noise
  if parameterization == "v":
    return v_from_x0_eps(sched, x0, noise, t)
  return x0


# ----------------------------------------------------------------- reverse --

class MeanVariance(NamedTuple):
  """The reverse step p(x_{t-1} | x_t) a model output implies."""
  mean: jax.Array
  variance: jax.Array
  log_variance: jax.Array
  pred_x0: jax.Array  # after denoised_fn and clipping
  pred_eps: jax.Array  # consistent with pred_x0


def split_model_output(model_output: jax.Array, channels: int, variance: str):
  """(prediction [..., C], variance output [..., C] or None)."""
  if variance in LEARNED_VARIANCES:
    if model_output.shape[-1] != 2 * channels:
      raise ValueError(
          f"variance={variance!r} needs a model output with 2 x {channels} "
          f"channels (prediction, variance); got {model_output.shape[-1]}")
    return model_output[..., :channels], model_output[..., channels:]
  if model_output.shape[-1] != channels:
    raise ValueError(
        f"variance={variance!r} needs a model output with {channels} channels; "
        f"got {model_output.shape[-1]} (use a learned variance for 2 x {channels})")
  return model_output, None


def model_log_variance(sched: Schedule, variance: str, var_output, t, shape):
  """(variance, log variance) of p(x_{t-1} | x_t), broadcast to `shape`."""
  check_choice("variance", variance, VARIANCES)
  ndim = len(shape)
  if variance == "fixed_small":
    log_var = extract(sched.posterior_log_variance_clipped, t, ndim)
  elif variance == "fixed_large":
    # beta_t, with beta~_1 at t = 0 so that log p(x_0 | x_1) stays finite.
    large = jnp.concatenate([sched.posterior_variance[1:2], sched.betas[1:]])
    log_var = jnp.log(extract(large, t, ndim))
  elif variance == "learned_range":
    frac = (var_output + 1.0) / 2.0
    min_log = extract(sched.posterior_log_variance_clipped, t, ndim)
    max_log = jnp.log(extract(sched.betas, t, ndim))
    log_var = frac * max_log + (1.0 - frac) * min_log
  else:  # "learned": the network outputs log Sigma directly
    log_var = var_output
  log_var = jnp.broadcast_to(log_var, shape).astype(jnp.float32)
  return jnp.exp(log_var), log_var


def p_mean_variance(sched: Schedule, model_output: jax.Array, x_t: jax.Array,
                    t: jax.Array, *, parameterization: str = "eps",
                    variance: str = "fixed_small", clip_denoised: bool = True,
                    denoised_fn: Optional[Callable] = None) -> MeanVariance:
  """Mean and variance of p(x_{t-1} | x_t) from a network's output.

  Args:
    sched: the schedule `t` indexes.
    model_output: [B, ..., C] or, for a learned variance, [B, ..., 2C]
      (prediction channels first, then the variance channels).
    x_t: [B, ..., C] the noisy input.
    t: [B] int indices into `sched`.
    parameterization: what the network predicts: "eps", "x0" or "v".
    variance: "fixed_small" (beta~_t), "fixed_large" (beta_t),
      "learned_range" (interpolate their logs by (v + 1) / 2) or "learned".
    clip_denoised: clip the predicted x_0 to [-1, 1].
    denoised_fn: applied to the predicted x_0 before clipping.

  Returns:
    A `MeanVariance`; `pred_eps` is recomputed from the final `pred_x0`.
  """
  prediction, var_output = split_model_output(model_output, x_t.shape[-1], variance)
  prediction = prediction.astype(jnp.float32)
  var, log_var = model_log_variance(sched, variance, var_output, t, x_t.shape)
  pred_x0 = x0_from_prediction(sched, prediction, x_t, t, parameterization)
  if denoised_fn is not None:
    pred_x0 = denoised_fn(pred_x0)
  if clip_denoised:
    pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
  mean, _, _ = q_posterior(sched, pred_x0, x_t, t)
  pred_eps = eps_from_x0(sched, x_t, t, pred_x0)
  return MeanVariance(mean, var, log_var, pred_x0, pred_eps)


# ------------------------------------------------------------------ losses --

def mean_flat(x: jax.Array) -> jax.Array:
  """Mean over every axis but the first: [B, ...] -> [B]."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1, log_var1, mean2, log_var2):
  """KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2))), elementwise, nats."""
  return 0.5 * (-1.0 + log_var2 - log_var1 + jnp.exp(log_var1 - log_var2)
                + (mean1 - mean2) ** 2 * jnp.exp(-log_var2))


def discretized_gaussian_log_likelihood(x, mean, log_scale):
  """log-likelihood of [-1, 1] data quantised to 256 bins, elementwise, nats.

  Args:
    x: targets, uint8 values rescaled to [-1, 1].
    mean: [same shape] the Gaussian means.
    log_scale: [same shape] log standard deviations.
  """
  centered = x - mean
  inv_std = jnp.exp(-log_scale)
  upper = inv_std * (centered + 1.0 / 255.0)
  lower = inv_std * (centered - 1.0 / 255.0)
  log_cdf_upper = jax.scipy.special.log_ndtr(upper)  # used at the bottom bin
  log_one_minus_cdf_lower = jax.scipy.special.log_ndtr(-lower)  # top bin
  cdf_delta = jax.scipy.special.ndtr(upper) - jax.scipy.special.ndtr(lower)
  log_delta = jnp.log(jnp.maximum(cdf_delta, 1e-12))
  return jnp.where(x < -0.999, log_cdf_upper,
                   jnp.where(x > 0.999, log_one_minus_cdf_lower, log_delta))


def vlb_term(sched: Schedule, out: MeanVariance, x0, x_t, t) -> jax.Array:
  """L_t of the variational bound, in bits per dimension: [B].

  KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0 and the decoder
  negative log-likelihood -log p(x_0 | x_1) at t = 0.
  """
  true_mean, _, true_log_var = q_posterior(sched, x0, x_t, t)
  kl = mean_flat(normal_kl(true_mean, true_log_var, out.mean, out.log_variance))
  nll = -mean_flat(discretized_gaussian_log_likelihood(
      x0, out.mean, 0.5 * out.log_variance))
  return jnp.where(t == 0, nll, kl) / np.log(2.0)


def training_losses(sched: Schedule, model_output: jax.Array, x0: jax.Array,
                    t: jax.Array, noise: jax.Array, *,
                    parameterization: str = "eps",
                    variance: str = "fixed_small",
                    vlb_weight: float = 0.001,
                    mse_weight: Optional[jax.Array] = None) -> dict[str, jax.Array]:
  """Per-example training losses for one sampled t per example.

  L_simple is the MSE between the prediction and its target, times
  `mse_weight` when given (`loss_weight`). With a learned
  variance the hybrid loss adds vlb_weight * T * L_t, where L_t's mean is
  computed from a stop-gradient prediction so the VLB term trains only the
  variance (Improved DDPM; T * L_t estimates the sum over all T terms).

  Args:
    sched: the training schedule (not respaced).
    model_output: [B, ..., C] or [B, ..., 2C] network output at (x_t, t).
    x0: [B, ..., C] clean data.
    t: [B] int timesteps.
    noise: [B, ..., C] the noise used to make x_t = q_sample(x0, t, noise).
    parameterization: "eps", "x0" or "v".
    variance: as in `p_mean_variance`.
    vlb_weight: lambda of the hybrid loss.
    mse_weight: [B] weights of the MSE (the VLB term is not weighted).

  Returns:
    {"mse": [B] (unweighted), "vb": [B] (zeros for a fixed variance),
     "loss": [B]}.
  """
  x_t = q_sample(sched, x0, t, noise)
  prediction, var_output = split_model_output(model_output, x0.shape[-1], variance)
  target = training_target(sched, x0, noise, t, parameterization)
  mse = mean_flat((prediction.astype(jnp.float32) - target) ** 2)
  weighted = mse if mse_weight is None else mse * mse_weight
  if var_output is None:
    return {"mse": mse, "vb": jnp.zeros_like(mse), "loss": weighted}
  frozen = jnp.concatenate([jax.lax.stop_gradient(prediction), var_output], -1)
  out = p_mean_variance(sched, frozen, x_t, t, parameterization=parameterization,
                        variance=variance, clip_denoised=False)
  vb = vlb_term(sched, out, x0, x_t, t) * (vlb_weight * sched.num_timesteps)
  return {"mse": mse, "vb": vb, "loss": weighted + vb}


# -------------------------------------------------------- loss weighting --

LOSS_WEIGHTINGS = ("none", "min_snr", "edm")


def snr(sched: Schedule, t: jax.Array) -> jax.Array:
  """The signal-to-noise ratio abar / (1 - abar) at t: [B] (from the float64
  square roots the schedule stores, precise where abar is near 1)."""
  ratio = (jnp.asarray(sched.sqrt_alphas_cumprod, jnp.float32)[t]
           / jnp.asarray(sched.sqrt_one_minus_alphas_cumprod, jnp.float32)[t])
  return ratio * ratio


def x0_mse_factor(snr_t: jax.Array, parameterization: str) -> jax.Array:
  """MSE in x_0 over the MSE of the prediction: the prediction error of
  eps is the x_0 error times sqrt(SNR), of v times sqrt(SNR + 1)."""
  check_choice("parameterization", parameterization, PARAMETERIZATIONS)
  if parameterization == "eps":
    return 1.0 / snr_t
  if parameterization == "v":
    return 1.0 / (snr_t + 1.0)
  return jnp.ones_like(snr_t)


def loss_weight(sched: Schedule, t: jax.Array, parameterization: str,
                weighting: str = "none", snr_gamma: float = 5.0,
                sigma_data: float = 0.5) -> jax.Array:
  """The weight of each example's prediction MSE: [B].

  Each weighting is a weight on the x_0 error, turned into a weight on the
  prediction's error by `x0_mse_factor`:

  - "none": 1 on the prediction (L_simple);
  - "min_snr": min(SNR, gamma) on x_0 (Hang et al. 2023): min(SNR, gamma) /
    SNR for eps, min(SNR, gamma) / (SNR + 1) for v, min(SNR, gamma) for x0;
    1 on the prediction where SNR = 0;
  - "edm": EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma
    sigma_data)^2 on x_0 (Karras et al. 2022), sigma^2 = 1 / SNR: SNR +
    1 / sigma_data^2; for v, (SNR + 1 / sigma_data^2) / (SNR + 1), which is
    1 at sigma_data = 1. An eps model's weight, 1 + 1 / (sigma_data^2 SNR),
    is unbounded at the schedule's end, so "edm" is for v and x0 models.

  Args:
    sched: the training schedule.
    t: [B] int timesteps.
    parameterization: "eps", "v" or "x0", what the network predicts.
    weighting: one of LOSS_WEIGHTINGS.
    snr_gamma: min-SNR's gamma (the paper's default is 5).
    sigma_data: EDM's data standard deviation.
  """
  check_choice("loss weighting", weighting, LOSS_WEIGHTINGS)
  check_choice("parameterization", parameterization, PARAMETERIZATIONS)
  snr_t = snr(sched, t)
  if weighting == "none":
    return jnp.ones_like(snr_t)
  if weighting == "min_snr":
    if parameterization == "eps":  # min(SNR, gamma) / SNR, finite at SNR = 0
      return jnp.minimum(1.0, snr_gamma / snr_t)
    # At SNR = 0 (zero terminal SNR) min(SNR, gamma) would leave the one
    # step that exists to be trained with no gradient; it keeps weight 1 on
    # the prediction there, as diffusers' scripts do.
    weight = jnp.minimum(snr_t, snr_gamma) * x0_mse_factor(snr_t, parameterization)
    return jnp.where(snr_t > 0, weight, 1.0)
  if parameterization == "eps":
    raise ValueError("the 'edm' loss weighting needs a v or x0 model: for eps it is "
                     "1 + 1 / (sigma_data^2 SNR), unbounded where SNR reaches 0")
  return (snr_t + 1.0 / sigma_data ** 2) * x0_mse_factor(snr_t, parameterization)


# ------------------------------------------------------ timestep sampling --

def log_sigma(sched: Schedule) -> np.ndarray:
  """float64 [T]: log sigma_t, sigma_t^2 = (1 - abar) / abar (EDM's noise level
  of x_t / sqrt(abar)); inf where abar = 0."""
  abar = np.asarray(sched.alphas_cumprod, np.float64)
  with np.errstate(divide="ignore"):
    return 0.5 * (np.log1p(-abar) - np.log(abar))


def log_normal_probabilities(sched: Schedule, mean: float = -1.2,
                             std: float = 1.2) -> np.ndarray:
  """float32 [T]: EDM's log-normal noise levels (ln sigma ~ N(mean, std^2),
  Karras et al. 2022: P_mean = -1.2, P_std = 1.2) on a discrete schedule.

  Each t takes the probability of the interval of ln sigma nearest to its
  own (bounded by the midpoints to its neighbours; the ends are open).
  """
  levels = log_sigma(sched)
  inner = 0.5 * (levels[1:] + levels[:-1])  # increasing with t
  edges = np.concatenate([[-np.inf], inner, [np.inf]])
  cdf = np.asarray([0.5 * (1.0 + math.erf(z / math.sqrt(2.0))) for z in (edges - mean) / std])
  probs = np.maximum(np.diff(cdf), 0.0)
  return (probs / probs.sum()).astype(np.float32)

class LossHistory(NamedTuple):
  """Recent per-timestep losses for importance sampling of t (a pytree)."""
  losses: jax.Array  # [T, K] float32, the last K losses seen at each t
  counts: jax.Array  # [T] int32, how many of the K slots are filled


def init_loss_history(num_timesteps: int, history: int = 10) -> LossHistory:
  """An empty history; sampling stays uniform until every t has K losses."""
  return LossHistory(jnp.zeros((num_timesteps, history), jnp.float32),
                     jnp.zeros((num_timesteps,), jnp.int32))


def timestep_probabilities(history: LossHistory,
                           uniform_prob: float = 0.001) -> jax.Array:
  """p(t) proportional to sqrt(E[L_t^2]), mixed with a little uniform: [T]."""
  num_timesteps, slots = history.losses.shape
  rms = jnp.sqrt(jnp.mean(history.losses ** 2, axis=-1))
  total = jnp.sum(rms)
  weighted = rms / jnp.where(total > 0, total, 1.0)
  weighted = weighted * (1.0 - uniform_prob) + uniform_prob / num_timesteps
  warm = jnp.all(history.counts == slots) & (total > 0)
  return jnp.where(warm, weighted, 1.0 / num_timesteps)


def sample_timesteps(rng: jax.Array, batch_size: int, num_timesteps: int,
                     history: Optional[LossHistory] = None,
                     uniform_prob: float = 0.001,
                     probabilities: Optional[jax.Array] = None):
  """Timesteps and importance weights for one batch.

  Args:
    rng: a PRNG key.
    batch_size: B.
    num_timesteps: T.
    history: a `LossHistory` for loss-second-moment importance sampling, or
      None for uniform sampling.
    uniform_prob: the uniform mixture weight of importance sampling.
    probabilities: [T] a fixed distribution of t (e.g.
      `log_normal_probabilities`); its weights are 1: the distribution is
      part of the objective, as in EDM, not an importance sampler.

  Returns:
    (t [B] int32, weights [B] float32) with E[weight * L_t] = mean_t L_t
    (for a fixed distribution, E[L_t] under it).
  """
  if probabilities is not None:
    t = jax.random.choice(rng, num_timesteps, (batch_size,), p=probabilities)
    return t.astype(jnp.int32), jnp.ones((batch_size,), jnp.float32)
  if history is None:
    t = jax.random.randint(rng, (batch_size,), 0, num_timesteps, jnp.int32)
    return t, jnp.ones((batch_size,), jnp.float32)
  probs = timestep_probabilities(history, uniform_prob)
  t = jax.random.choice(rng, num_timesteps, (batch_size,), p=probs).astype(jnp.int32)
  return t, 1.0 / (num_timesteps * probs[t])


def update_loss_history(history: LossHistory, t: jax.Array,
                        losses: jax.Array) -> LossHistory:
  """Records each example's loss at its timestep, dropping the oldest."""
  slots = history.losses.shape[1]

  def record(i, h: LossHistory) -> LossHistory:
    step, loss, count = t[i], losses[i].astype(jnp.float32), h.counts[t[i]]
    row = h.losses[step]
    appended = row.at[jnp.minimum(count, slots - 1)].set(loss)
    rolled = jnp.roll(row, -1).at[-1].set(loss)
    row = jnp.where(count >= slots, rolled, appended)
    return LossHistory(h.losses.at[step].set(row),
                       h.counts.at[step].set(jnp.minimum(count + 1, slots)))

  return jax.lax.fori_loop(0, t.shape[0], record, history)
