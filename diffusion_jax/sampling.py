"""Sampling loops: ancestral DDPM, DDIM(eta) and the high-order solvers
(`solvers.py`: DPM-Solver++ 2M, 3M and 2M SDE, Heun), each one compiled
`lax.scan`. "euler" and "euler_ancestral" are k-diffusion's names for DDIM
at eta 0 and 1 (on the same integer timesteps, ending at x_0, the same
steps).

`model_fn(x_t, t, **cond)` is any pure function of arrays returning the
network output for `x_t` [B, ..., C] at original (unrespaced) timesteps `t`
[B]. `cond_fn(x_t, t, **cond)` returns a guidance gradient with respect to
`x_t` (see `guidance.py`); the samplers apply it as a shift of the ancestral
mean (Sigma * grad) or as a score shift of eps (eps - sqrt(1 - abar) grad).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import diffusion, platform, solvers
from diffusion_jax.schedules import Schedule

# method -> network evaluations per step (Heun: two, one at the last step).
METHODS = ("ddpm", "ddim", "euler", "euler_ancestral", "dpmpp_2m", "dpmpp_3m",
           "dpmpp_2m_sde", "unipc", "heun")
ALIASES = {"euler": ("ddim", 0.0), "euler_ancestral": ("ddim", 1.0)}
ONE_STEP = ("ddpm", "ddim", "euler", "euler_ancestral")  # no history: RePaint can jump back


class StepOptions(NamedTuple):
  """How a network output becomes a reverse step (static under jit)."""
  clip_denoised: bool = True
  parameterization: str = "eps"
  variance: str = "fixed_small"
  denoised_fn: Optional[Callable] = None
  cond_fn: Optional[Callable] = None


def _model_step(model_fn, schedule: Schedule, x, t, opts: StepOptions, cond):
  """Calls the model at original timesteps: (MeanVariance, original t)."""
  t_model = schedule.timesteps[t]
  output = model_fn(x, t_model, **cond)
  out = diffusion.p_mean_variance(
      schedule, output, x, t, parameterization=opts.parameterization,
      variance=opts.variance, clip_denoised=opts.clip_denoised,
      denoised_fn=opts.denoised_fn)
  return out, t_model


def shift_eps(schedule: Schedule, eps, x_t, t, grad):
  """Score-form guidance: eps - sqrt(1 - abar_t) * grad log p(y | x_t)."""
  return eps - diffusion.extract(
      schedule.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * grad


def _guided_eps_x0(schedule, out, x, t, t_model, opts, cond):
  """(eps, pred_x0) after the score-form guidance shift, if any."""
  if opts.cond_fn is None:
    return out.pred_eps, out.pred_x0
  eps = shift_eps(schedule, out.pred_eps, x, t, opts.cond_fn(x, t_model, **cond))
  # x_0 of the shifted eps, written as the model's x_0 plus the shift's
  # change of it (-sqrt(1 / abar - 1) times the change of eps): the same
  # value as x0_from_eps(eps), without its cancellation at high noise, and
  # a zero shift leaves x_0 exactly as it was. Where abar = 0 (a
  # zero-terminal-SNR schedule's top) x_0 cannot be had from eps, and the
  # shift leaves it unchanged: x_t holds no signal there.
  shift = -diffusion.extract(schedule.sqrt_recipm1_alphas_cumprod, t, x.ndim) * (
      eps - out.pred_eps)
  signal = diffusion.extract(schedule.alphas_cumprod, t, x.ndim) > 0
  pred_x0 = jnp.where(signal, out.pred_x0 + shift, out.pred_x0)
  # The guided x_0 processed as the model's own (denoised_fn, then the clip
  # to [-1, 1]), and eps made consistent with it: unclipped, the shift at
  # the cosine schedule's t = 999 is 20,000 times the classifier's gradient
  # (docs/samplers.md), which the ODE solvers then carry to the end.
  if opts.denoised_fn is not None:
    pred_x0 = opts.denoised_fn(pred_x0)
  if opts.clip_denoised:
    pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
  return diffusion.eps_from_x0(schedule, x, t, pred_x0), pred_x0


def _not_last(t, ndim):
  """1 where noise is added (t > 0), 0 at the final step: [B, 1, ...]."""
  return (t != 0).astype(jnp.float32).reshape((-1,) + (1,) * (ndim - 1))


def ddpm_step(model_fn, schedule: Schedule, x_t, t, rng,
              opts: StepOptions = StepOptions(), **cond):
  """One ancestral step x_t -> x_{t-1}; returns (x_{t-1}, pred_x0).

  `t` [B] indexes `schedule`. With a `cond_fn`, the mean is shifted by
  Sigma_t * grad (ADM's condition_mean).
  """
  out, t_model = _model_step(model_fn, schedule, x_t, t, opts, cond)
  mean = out.mean
  if opts.cond_fn is not None:
    mean = mean + out.variance * opts.cond_fn(x_t, t_model, **cond)
  noise = jax.random.normal(rng, x_t.shape, jnp.float32)
  x_prev = mean + _not_last(t, x_t.ndim) * jnp.exp(0.5 * out.log_variance) * noise
  return x_prev, out.pred_x0


def ddim_sigma(schedule: Schedule, t, eta, ndim):
  """sigma_t(eta) = eta sqrt((1 - abar_prev)/(1 - abar)) sqrt(1 - abar/abar_prev)."""
  abar = diffusion.extract(schedule.alphas_cumprod, t, ndim)
  abar_prev = diffusion.extract(schedule.alphas_cumprod_prev, t, ndim)
  return eta * jnp.sqrt((1 - abar_prev) / (1 - abar)) * jnp.sqrt(1 - abar / abar_prev)


def ddim_step(model_fn, schedule: Schedule, x_t, t, rng, eta=0.0,
              opts: StepOptions = StepOptions(), **cond):
  """One DDIM step x_t -> x_{t-1} with noise scale eta; (x_{t-1}, pred_x0).

  With a `cond_fn`, eps is shifted in score form (ADM's condition_score).
  eta = 1 is ancestral sampling with the posterior variance beta~_t.
  """
  out, t_model = _model_step(model_fn, schedule, x_t, t, opts, cond)
  eps, pred_x0 = _guided_eps_x0(schedule, out, x_t, t, t_model, opts, cond)
  abar_prev = diffusion.extract(schedule.alphas_cumprod_prev, t, x_t.ndim)
  sigma = ddim_sigma(schedule, t, eta, x_t.ndim)
  mean = (jnp.sqrt(abar_prev) * pred_x0
          + jnp.sqrt(jnp.maximum(1 - abar_prev - sigma ** 2, 0.0)) * eps)
  noise = jax.random.normal(rng, x_t.shape, jnp.float32)
  return mean + _not_last(t, x_t.ndim) * sigma * noise, pred_x0


def solver_step(model_fn, schedule: Schedule, x_t, t, rng, history, method: str,
                opts: StepOptions = StepOptions(), keep=None, **cond):
  """One step of a high-order solver (`solvers.py`): (x at the level below,
  the data prediction, the updated history). `keep`: the known pixels'
  mask where they are pasted into each x_t (UniPC's corrector keeps them)."""
  out, t_model = _model_step(model_fn, schedule, x_t, t, opts, cond)
  eps, pred_x0 = _guided_eps_x0(schedule, out, x_t, t, t_model, opts, cond)
  if method == "heun":
    return heun_step(model_fn, schedule, x_t, t, eps, pred_x0, opts, cond), pred_x0, history
  if method == "unipc":
    x_next, history = solvers.unipc_step(schedule, x_t, pred_x0, t[0], history,
                                         schedule.num_timesteps, keep)
    return x_next, pred_x0, history
  noise = jax.random.normal(rng, x_t.shape, jnp.float32)
  x_next, history = solvers.dpmpp_step(schedule, x_t, pred_x0, t[0], history,
                                       solvers.MULTISTEP[method], schedule.num_timesteps,
                                       sde=method.endswith("_sde"), noise=noise)
  return x_next, pred_x0, history


#: Heun's correction at the two ends of the path (`heun_step`). False, ours:
#: the first step and the last real step are Euler's. True: every step but
#: the one to sigma 0 is corrected, as k-diffusion and diffusers do (the
#: parity test sets it; read when the sampler is traced).
HEUN_CORRECTS_ENDS = False


def heun_step(model_fn, schedule: Schedule, x_t, t, eps, pred_x0, opts: StepOptions, cond):
  """Heun's method (Karras et al. 2022, Algorithm 1 without churn) on x / alpha
  against sigma / alpha: an Euler step (which is DDIM at eta 0), then the
  average of the two slopes; the step to x_0 is Euler's alone."""
  abar_next = diffusion.extract(schedule.alphas_cumprod_prev, t, x_t.ndim)
  sigma = solvers.ve_sigma(schedule, t, x_t.ndim)
  sigma_next = solvers.ve_sigma(schedule, t, x_t.ndim, below=True)
  euler = jnp.sqrt(abar_next) * pred_x0 + jnp.sqrt(1.0 - abar_next) * eps

  def corrected(euler):
    below = jnp.maximum(t - 1, 0)
    out, t_model = _model_step(model_fn, schedule, euler, below, opts, cond)
    eps_next, _ = _guided_eps_x0(schedule, out, euler, below, t_model, opts, cond)
    ve = euler / jnp.sqrt(abar_next) + 0.5 * (sigma_next - sigma) * (eps_next - eps)
    return jnp.sqrt(abar_next) * ve

  # The first step, from the top of the schedule, is Euler's too: there
  # sigma / alpha is 20,000 on the cosine schedule (abar 2.4e-9), and the
  # trapezoid's correction, (sigma_next - sigma) / 2 times a change of eps,
  # would be multiplied by it. So is the last real step (into t = 0 where
  # the schedule keeps it, as the multistep solvers' first order there): its
  # correction needs eps at a level within 1e-4 of the data, which no model
  # knows (a trained one's is half noise), times half the long last step's
  # sigma: every 6-step Heun sample of shapes-classes ended covered by noise.
  if HEUN_CORRECTS_ENDS:  # k-diffusion's and diffusers' Heun
    corrects = t[0] > 0
  else:
    corrects = ((t[0] > solvers.final_index(schedule))
                & (t[0] < schedule.num_timesteps - 1))
  return jax.lax.cond(corrects, corrected, lambda euler: euler, euler)


def ddim_encode_step(model_fn, schedule: Schedule, x, t,
                     opts: StepOptions = StepOptions(), **cond):
  """Deterministic DDIM step up: from level abar_prev[t] to abar[t].

  The exact reverse of `ddim_step` with eta = 0 up to evaluating eps at the
  input rather than the output; at t = 0 the input is x_0 itself.
  """
  out, t_model = _model_step(model_fn, schedule, x, t, opts, cond)
  eps, _ = _guided_eps_x0(schedule, out, x, t, t_model, opts, cond)
  abar = diffusion.extract(schedule.alphas_cumprod, t, x.ndim)
  abar_prev = diffusion.extract(schedule.alphas_cumprod_prev, t, x.ndim)
  x0 = (x - jnp.sqrt(1 - abar_prev) * eps) / jnp.sqrt(abar_prev)
  if opts.clip_denoised:
    x0 = jnp.clip(x0, -1.0, 1.0)
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1 - abar) * eps


# ---------------------------------------------------------------- progress --

class _Progress:
  """A tqdm bar driven from inside the compiled loop by a host callback."""
  bar = None

  @classmethod
  def update(cls, done, total):
    import tqdm  # only when asked for
    done, total = int(done), int(total)
    if cls.bar is None or done < cls.bar.n or cls.bar.total != total:
      cls.close()
      cls.bar = tqdm.tqdm(total=total, desc="sampling", unit="step")
    if done > cls.bar.n:  # idempotent: a sharded loop may report per device
      cls.bar.update(done - cls.bar.n)
    if done >= total:
      cls.close()

  @classmethod
  def close(cls):
    if cls.bar is not None:
      cls.bar.close()
      cls.bar = None


def _report(done, total, enabled):
  if enabled:
    jax.debug.callback(_Progress.update, done, total)


# ------------------------------------------------------------------ editing --

KNOWN_MODES = ("x0", "x_t")


class Known(NamedTuple):
  """Pixels the samples keep (traced: a new mask reuses the compilation).

  Attributes:
    image: [B, ..., C] in [-1, 1]; only the pixels `mask` keeps matter.
    mask: [B, ..., 1], 1 where the pixel is known, 0 where it is sampled.
  """
  image: jax.Array
  mask: jax.Array

  def paste(self, x):
    """x with the known pixels put in."""
    return x * (1 - self.mask) + self.image * self.mask


def repaint_plan(num_steps: int, jump: int = 10, resample: int = 10) -> np.ndarray:
  """RePaint's schedule (Lugmayr et al. 2022) as [L, 2] int32 rows (t, up).

  Row (t, 0) is a reverse step at index t (level t + 1 to level t, level 0
  clean, level N pure noise); (t, 1) re-noises one step up, level t to
  t + 1. Descending, at every level divisible by `jump` (and at least `jump`
  below the top) the chain goes `jump` levels back up, `resample - 1` times,
  so the known and generated regions harmonise. `resample=1` is plain
  sampling: (N - 1, 0), ..., (0, 0).
  """
  if jump < 1 or resample < 1:
    raise ValueError(f"RePaint needs jump >= 1 and resample >= 1, got {jump}, {resample}")
  remaining = dict.fromkeys(range(0, num_steps - jump + 1, jump), resample - 1)
  plan, level = [], num_steps
  while level > 0 or remaining.get(0, 0) > 0:
    if level > 0:
      plan.append((level - 1, 0))
      level -= 1
    if remaining.get(level, 0) > 0:
      remaining[level] -= 1
      for _ in range(jump):
        plan.append((level, 1))
        level += 1
  return np.asarray(plan, np.int32).reshape(-1, 2)


def _replace_known(schedule: Schedule, known: Known, x_prev, t, rng):
  """x_{t-1} whose known region is the known image noised to x_{t-1}'s level
  (abar_prev[t]: exactly the image at the last step)."""
  abar_prev = diffusion.extract(schedule.alphas_cumprod_prev, t, x_prev.ndim)
  noisy = (jnp.sqrt(abar_prev) * known.image
           + jnp.sqrt(1 - abar_prev) * jax.random.normal(rng, x_prev.shape, jnp.float32))
  return x_prev * (1 - known.mask) + noisy * known.mask


def _renoise(schedule: Schedule, x, t, rng):
  """One step up, level t to t + 1: sqrt(1 - beta) x + sqrt(beta) z."""
  beta = diffusion.extract(schedule.betas, t, x.ndim)
  return jnp.sqrt(1 - beta) * x + jnp.sqrt(beta) * jax.random.normal(rng, x.shape, jnp.float32)


# ------------------------------------------------------------------- loops --

def _constrain(x, sharding):
  return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


class _Loop(NamedTuple):
  """What the compiled loop is specialised on (static)."""
  shape: tuple
  method: str
  opts: StepOptions
  known_mode: Optional[str]  # None: no known pixels
  repaint: bool  # the plan has up-steps
  editing: bool  # starts from a re-noised image (SDEdit)
  return_trajectory: bool
  progress: bool


def _start(schedule, rng, x_T, init, start, temperature, loop: _Loop):
  """The state the loop starts from: x_T (given, or noise times
  `temperature`), or an image re-noised to the level of step `start` - 1."""
  noise = jax.random.normal(rng, loop.shape, jnp.float32)
  if loop.editing:
    t = jnp.full((loop.shape[0],), start - 1, jnp.int32)
    return diffusion.q_sample(schedule, init.astype(jnp.float32), t, noise)
  return noise * temperature if x_T is None else x_T


@functools.partial(platform.jit, static_argnames=("model_fn", "loop", "sharding"))
def _sample(schedule, rng, eta, x_T, cond, plan, known, init, strength, temperature, *,
            model_fn, loop: _Loop, sharding):
  init_rng, loop_rng = jax.random.split(rng)
  num_steps = schedule.num_timesteps
  start = jnp.clip(jnp.round(strength * num_steps), 1, num_steps).astype(jnp.int32)
  x = _start(schedule, init_rng, x_T, init, start, temperature, loop)
  x = _constrain(x.astype(jnp.float32), sharding)
  opts = loop.opts
  if loop.known_mode == "x0":  # GLIDE: the known pixels pasted into each x_0
    inner = opts.denoised_fn
    opts = opts._replace(denoised_fn=lambda x0: known.paste(x0 if inner is None else inner(x0)))

  def down(carry, t, rng):
    x, history = carry
    if loop.method == "ddpm":
      x_prev, pred_x0 = ddpm_step(model_fn, schedule, x, t, rng, opts, **cond)
    elif loop.method == "ddim":
      x_prev, pred_x0 = ddim_step(model_fn, schedule, x, t, rng, eta, opts, **cond)
    else:
      keep = known.mask if loop.known_mode == "x_t" else None
      x_prev, pred_x0, history = solver_step(model_fn, schedule, x, t, rng, history,
                                             loop.method, opts, keep, **cond)
    if loop.known_mode == "x_t":
      x_prev = _replace_known(schedule, known, x_prev, t, jax.random.fold_in(rng, 1))
    return (x_prev, history), pred_x0

  def up(carry, t, rng):
    x, history = carry
    return (_renoise(schedule, x, t, rng), history), jnp.zeros_like(x)

  def body(carry, entry):
    index, (t_index, is_up) = entry
    t = jnp.full((loop.shape[0],), t_index, jnp.int32)
    # Step t's noise is fold_in(key, t), as it always was (the same seed
    # draws the same samples); a RePaint plan visits t again, so there each
    # row of the plan has its own.
    rng = jax.random.fold_in(loop_rng, num_steps + index if loop.repaint else t_index)
    if loop.repaint:
      step = lambda x, t, rng: jax.lax.cond(is_up > 0, up, down, x, t, rng)  # noqa: E731
    else:
      step = down
    if loop.editing:  # SDEdit: the steps above the start level are skipped
      (x_prev, history), pred_x0 = jax.lax.cond(
          t_index < start, step, lambda carry, t, rng: (carry, carry[0]), carry, t, rng)
    else:
      (x_prev, history), pred_x0 = step(carry, t, rng)
    x_prev = _constrain(x_prev, sharding)
    _report(index + 1, plan.shape[0], loop.progress)
    return (x_prev, history), ((x_prev, pred_x0) if loop.return_trajectory else None)

  history = (solvers.History.empty(loop.shape) if loop.method in solvers.MULTISTEP
             else None)
  entries = (jnp.arange(plan.shape[0]), (plan[:, 0], plan[:, 1]))
  (x, _), trajectory = jax.lax.scan(body, (x, history), entries)
  if loop.known_mode is not None:  # the kept pixels returned exactly
    x = known.paste(x)
  if not loop.return_trajectory:
    return x
  return x, {"x": trajectory[0], "pred_x0": trajectory[1]}


def _check_options(method, eta, variance, parameterization):
  diffusion.check_choice("sampling method", method, METHODS)
  diffusion.check_choice("variance", variance, diffusion.VARIANCES)
  diffusion.check_choice("parameterization", parameterization,
                         diffusion.PARAMETERIZATIONS)
  if isinstance(eta, (int, float)) and eta < 0:
    raise ValueError(f"eta must be >= 0, got {eta}")


def _check_start(shape, x_T):
  if len(shape) < 2:
    raise ValueError(f"shape must be [B, ...] with at least 2 axes, got {shape}")
  if x_T is not None and tuple(x_T.shape) != shape:
    raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape is {shape}")


def _check_editing(shape, known, known_mode, init_image, strength, x_T):
  if known is not None:
    diffusion.check_choice("known_mode", known_mode, KNOWN_MODES)
    if tuple(known.image.shape) != shape or tuple(known.mask.shape) != shape[:-1] + (1,):
      raise ValueError(f"known image and mask must be {shape} and {shape[:-1] + (1,)}; got "
                       f"{tuple(known.image.shape)} and {tuple(known.mask.shape)}")
  if init_image is not None:
    if tuple(init_image.shape) != shape:
      raise ValueError(f"init_image has shape {tuple(init_image.shape)} but shape is {shape}")
    if x_T is not None:
      raise ValueError("give x_T or init_image (a re-noised start), not both")
  if isinstance(strength, (int, float)) and not 0 < strength <= 1:
    raise ValueError(f"strength must be in (0, 1], got {strength}")


def sample(model_fn: Callable, schedule: Schedule, shape: Sequence[int],
           rng: jax.Array, *, method: str = "ddpm", eta: float = 0.0,
           clip_denoised: bool = True, parameterization: str = "eps",
           variance: str = "fixed_small", cond_fn: Optional[Callable] = None,
           denoised_fn: Optional[Callable] = None,
           x_T: Optional[jax.Array] = None, temperature: float = 1.0,
           known: Optional[Known] = None, known_mode: str = "x_t",
           resample: int = 1, jump: int = 10,
           init_image: Optional[jax.Array] = None, strength: float = 1.0,
           return_trajectory: bool = False,
           progress: bool = False, sharding: Any = None, **cond):
  """Draws samples by running the reverse process, compiled as one program.

  Args:
    model_fn: `model_fn(x_t, t, **cond)`, t holding original timesteps. It is
      a static argument of the compiled loop: pass the same object to reuse
      the compilation, and close over parameters inside your own `jax.jit`
      (or pass them through `cond`) rather than as Python constants.
    schedule: the (possibly respaced) schedule to run, from its last step.
    shape: [B, ...] of the samples (channels last).
    rng: a PRNG key; the starting noise and every step's noise derive from it.
    method: "ddpm" (ancestral), "ddim", "euler" (DDIM at eta 0),
      "euler_ancestral" (DDIM at eta 1), "dpmpp_2m", "dpmpp_3m",
      "dpmpp_2m_sde" (DPM-Solver++), "unipc" (UniPC bh2, order 2) or
      "heun" (two network evaluations a
      step, one at the first and at the last real one).
    eta: DDIM's noise scale; 0 is deterministic, 1 is ancestral with beta~
      (ignored by the other methods).
    clip_denoised: clip each predicted x_0 to [-1, 1].
    parameterization: "eps", "x0" or "v", what the network predicts.
    variance: "fixed_small", "fixed_large", "learned_range" or "learned".
    cond_fn: guidance gradient `cond_fn(x_t, t, **cond)`, or None.
    denoised_fn: maps each predicted x_0 before it is used.
    x_T: [shape] starting noise; drawn from `rng` when None.
    temperature: scales the drawn starting noise (GLIDE's upsampler: 0.997).
    known: pixels to keep (inpainting), traced; the result holds them
      exactly. How the rest is made consistent with them:
    known_mode: "x0" pastes them into every predicted x_0 (GLIDE, for a
      model trained to inpaint); "x_t" replaces the known region of each
      x_{t-1} by the known image noised to its level (any model).
    resample, jump: RePaint's resampling (with known pixels; RePaint's
      defaults are 10 and 10); resample = 1 is off.
    init_image: [shape] an image to edit (SDEdit): it is noised to the level
      of the step `round(strength * N)` and denoised from there.
    strength: in (0, 1], traced (a new strength reuses the compilation).
    return_trajectory: also return every intermediate state.
    progress: show a progress bar (a host callback per step; off by default).
    sharding: a `jax.sharding.Sharding` for the samples, e.g. batch-sharded
      over a mesh; when None the input's sharding propagates.
    **cond: per-example conditioning arrays ([B, ...]) for model_fn and
      cond_fn, e.g. `y=labels`.

  Returns:
    The samples x_0 [shape]; with `return_trajectory`, (x_0, trajectory), the
    trajectory a dict of "x" and "pred_x0", each `[L, *shape]`, from the
    first step to the last.
  """
  shape = tuple(int(s) for s in shape)
  _check_options(method, eta, variance, parameterization)
  method, eta = ALIASES.get(method, (method, eta))
  if resample > 1 and method not in ONE_STEP:
    raise ValueError(f"RePaint's jumps back (resample > 1) need a one-step sampler (ddpm or "
                     f"ddim): {method} keeps a history that a jump back would break")
  _check_start(shape, x_T)
  _check_editing(shape, known, known_mode, init_image, strength, x_T)
  if resample > 1 and known is None:
    raise ValueError("RePaint resampling (resample > 1) needs known pixels to harmonise with")
  plan = repaint_plan(schedule.num_timesteps, jump, resample)
  opts = StepOptions(clip_denoised, parameterization, variance, denoised_fn, cond_fn)
  loop = _Loop(shape, method, opts, None if known is None else known_mode, resample > 1,
               init_image is not None, return_trajectory, progress)
  return _sample(schedule, rng, jnp.float32(eta), x_T, cond, plan, known, init_image,
                 jnp.float32(strength), jnp.float32(temperature), model_fn=model_fn,
                 loop=loop, sharding=sharding)


@functools.partial(platform.jit, static_argnames=("model_fn", "opts", "sharding"))
def _encode(schedule, x0, cond, *, model_fn, opts, sharding):
  def body(x, i):
    t = jnp.full((x0.shape[0],), i, jnp.int32)
    x_next = ddim_encode_step(model_fn, schedule, x, t, opts, **cond)
    return _constrain(x_next, sharding), None

  x, _ = jax.lax.scan(body, _constrain(x0.astype(jnp.float32), sharding),
                      jnp.arange(schedule.num_timesteps))
  return x


def ddim_encode(model_fn: Callable, schedule: Schedule, x0: jax.Array, *,
                clip_denoised: bool = False, parameterization: str = "eps",
                variance: str = "fixed_small", cond_fn: Optional[Callable] = None,
                sharding: Any = None, **cond) -> jax.Array:
  """Runs the DDIM ODE forward, x_0 -> x_T (the inverse of eta = 0 sampling).

  `sample(..., method="ddim", eta=0, x_T=ddim_encode(...))` returns x_0 to
  within the ODE's discretisation error. Arguments as in `sample`.

  Returns:
    x_T [same shape as x0], at the noise level of the schedule's last step.
  """
  _check_options("ddim", 0.0, variance, parameterization)
  opts = StepOptions(clip_denoised, parameterization, variance, None, cond_fn)
  return _encode(schedule, x0, cond, model_fn=model_fn, opts=opts, sharding=sharding)
