"""Noise schedules as data: a frozen pytree of precomputed float32 arrays.

Every coefficient is computed once in float64 with numpy and stored as float32,
so the diffusion math (`diffusion.py`) is a set of pure functions that index
into a `Schedule`. Respacing returns a new `Schedule` whose `timesteps` field
maps its own indices 0..N-1 to the indices of the original process.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

COSINE_OFFSET = 0.008  # s in Nichol & Dhariwal (2021), eq. 17
MAX_BETA = 0.999  # betas of the cosine schedule are clipped here


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Schedule:
  """All per-timestep coefficients of a discrete Gaussian diffusion.

  Each field is a float32 array of shape [N] (N = `num_timesteps`), except
  `timesteps`, an int32 [N] array of the original (unrespaced) step indices.
  """

  betas: jax.Array
  alphas: jax.Array  # 1 - beta, stored too: precise where beta is near 1
  alphas_cumprod: jax.Array
  alphas_cumprod_prev: jax.Array  # alpha_bar_{t-1}, 1 at t = 0
  alphas_cumprod_next: jax.Array  # alpha_bar_{t+1}, 0 at t = N - 1
  sqrt_alphas_cumprod: jax.Array
  sqrt_one_minus_alphas_cumprod: jax.Array
  log_one_minus_alphas_cumprod: jax.Array
  sqrt_recip_alphas_cumprod: jax.Array
  sqrt_recipm1_alphas_cumprod: jax.Array
  posterior_variance: jax.Array  # beta~_t
  posterior_log_variance_clipped: jax.Array  # log beta~_t, beta~_1 at t = 0
  posterior_mean_coef1: jax.Array  # multiplies x_0
  posterior_mean_coef2: jax.Array  # multiplies x_t
  timesteps: jax.Array  # int32 original indices kept, ascending

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]


def schedule_from_betas(betas: Sequence[float] | np.ndarray,
                        timesteps: Sequence[int] | np.ndarray | None = None
                        ) -> Schedule:
  """Builds a `Schedule` from betas, computing every coefficient in float64.

  Args:
    betas: [N] betas in (0, 1].
    timesteps: [N] original step indices; `arange(N)` when omitted.

  Returns:
    The schedule, every array stored as float32 (timesteps as int32).
  """
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.size == 0:
    raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
  if not np.all((betas > 0) & (betas <= 1)):
    raise ValueError("betas must lie in (0, 1]")
  n = betas.shape[0]
  timesteps = np.arange(n) if timesteps is None else np.asarray(timesteps)
  alphas = 1.0 - betas
  abar = np.cumprod(alphas)
  abar_prev = np.append(1.0, abar[:-1])
  abar_next = np.append(abar[1:], 0.0)
  post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
  # beta~_0 is 0; its log is replaced by log beta~_1 (the value at t = 0 is
  # never used to add noise, but must stay finite).
  post_log_var = np.log(np.append(post_var[1], post_var[1:]) if n > 1
                        else np.maximum(post_var, 1e-20))
  with np.errstate(divide="ignore"):  # 1 / abar is inf where abar_T = 0 (zero terminal SNR)
    recip = 1.0 / abar
  arrays = dict(
      betas=betas,
      alphas=alphas,
      alphas_cumprod=abar,
      alphas_cumprod_prev=abar_prev,
      alphas_cumprod_next=abar_next,
      sqrt_alphas_cumprod=np.sqrt(abar),
      sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - abar),
      log_one_minus_alphas_cumprod=np.log(1.0 - abar),
      sqrt_recip_alphas_cumprod=np.sqrt(recip),
      sqrt_recipm1_alphas_cumprod=np.sqrt(recip - 1.0),
      posterior_variance=post_var,
      posterior_log_variance_clipped=post_log_var,
      posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
      posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
  )
  arrays = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in arrays.items()}
  return Schedule(timesteps=jnp.asarray(timesteps, dtype=jnp.int32), **arrays)


def linear_betas(num_timesteps: int) -> np.ndarray:
  """DDPM's linear betas, 1e-4 to 0.02 at T = 1000, scaled by 1000 / T."""
  scale = 1000.0 / num_timesteps
  return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, offset: float = COSINE_OFFSET,
                 max_beta: float = MAX_BETA) -> np.ndarray:
  """Improved DDPM's cosine betas: 1 - abar(t+1)/abar(t), clipped at max_beta."""
  def abar(t):
    return math.cos((t / num_timesteps + offset) / (1 + offset) * math.pi / 2) ** 2
  betas = [min(1 - abar(i + 1) / abar(i), max_beta) for i in range(num_timesteps)]
  return np.asarray(betas, dtype=np.float64)


def rescale_zero_terminal_snr(betas: Sequence[float] | np.ndarray) -> np.ndarray:
  """Betas whose last alpha_bar is exactly 0 (Lin et al. 2024, Algorithm 1).

  sqrt(alpha_bar) is shifted so its last value is 0 and scaled so its first
  is unchanged; the last beta becomes 1. Only a v- or x0-predicting model can
  use such a schedule: at the last step x_t holds no signal and eps = x_t.
  """
  sqrt_abar = np.sqrt(np.cumprod(1.0 - np.asarray(betas, np.float64)))
  first, last = sqrt_abar[0], sqrt_abar[-1]
  abar = ((sqrt_abar - last) * first / (first - last)) ** 2
  alphas = np.append(abar[0], abar[1:] / abar[:-1])
  return 1.0 - alphas


_BETA_FNS = {"linear": linear_betas, "cosine": cosine_betas,
             "squaredcos_cap_v2": cosine_betas}


def named_betas(kind: str, num_timesteps: int, zero_terminal_snr: bool = False) -> np.ndarray:
  """A named schedule's betas [T] in float64 numpy (no JAX call, so a config
  can be checked before `jax.distributed.initialize`); see `make_schedule`."""
  if kind not in _BETA_FNS:
    raise ValueError(f"unknown schedule {kind!r}; choose one of {sorted(_BETA_FNS)}")
  if not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
    raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
  betas = _BETA_FNS[kind](int(num_timesteps))
  return rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas


def make_schedule(kind: str, num_timesteps: int, zero_terminal_snr: bool = False) -> Schedule:
  """Makes a named schedule.

  Args:
    kind: "linear" (DDPM) or "cosine" (Improved DDPM; alias
      "squaredcos_cap_v2").
    num_timesteps: T, the number of diffusion steps.
    zero_terminal_snr: rescale the betas so alpha_bar_T = 0
      (`rescale_zero_terminal_snr`).

  Returns:
    The `Schedule` with `timesteps = arange(T)`.
  """
  return schedule_from_betas(named_betas(kind, num_timesteps, zero_terminal_snr))


def _section_steps(start: int, size: int, count: int, spec: str) -> list[int]:
  """`count` steps of [start, start + size) at a fractional, rounded stride."""
  if count > size:
    raise ValueError(
        f"respacing spec {spec!r}: cannot take {count} steps from a section of {size}")
  if count == 1:
    return [start]
  stride = (size - 1) / (count - 1)
  steps, position = [], 0.0
  for _ in range(count):  # accumulated, then rounded half to even, as in
    steps.append(start + round(position))  # guided-diffusion's space_timesteps
    position += stride
  return steps


def _ddim_steps(spec: str, num_timesteps: int) -> list[int]:
  """"ddimN": range(0, T, i) for the smallest stride i giving N steps."""
  try:
    wanted = int(spec[len("ddim"):])
  except ValueError:
    raise ValueError(f"respacing spec {spec!r}: expected 'ddim' and a number") from None
  for stride in range(1, num_timesteps):
    if len(range(0, num_timesteps, stride)) == wanted:
      return list(range(0, num_timesteps, stride))
  raise ValueError(
      f"respacing spec {spec!r}: no integer stride gives exactly {wanted} "
      f"steps out of {num_timesteps}")


def _parse_counts(spec: str) -> list[int]:
  try:
    counts = [int(c) for c in spec.split(",")]
  except ValueError:
    raise ValueError(
        f"respacing spec {spec!r}: expected 'ddimN', 'fast27' or comma-separated "
        "step counts such as '250' or '10,10,3,2,2'") from None
  if any(c < 1 for c in counts):
    raise ValueError(f"respacing spec {spec!r}: every count must be at least 1")
  return counts


# Spacings by noise level (`spaced_by_level`): diffusers' lambda_min_clipped
# for the cosine schedule, and EDM's sigma_max (of x / alpha).
LAMBDA_MIN = -5.1
KARRAS_SIGMA_MAX = 80.0
KARRAS_RHO = 7.0
LEVEL_SPACINGS = ("logsnr", "karras")


def _level_spacing(spec: str):
  """("logsnr" | "karras", N) for "logsnrN" / "karrasN", else None."""
  for name in LEVEL_SPACINGS:
    if spec.startswith(name):
      try:
        count = int(spec[len(name):])
      except ValueError:
        raise ValueError(f"respacing spec {spec!r}: expected {name!r} and a number") from None
      if count < 2:
        raise ValueError(f"respacing spec {spec!r}: needs at least 2 steps")
      return name, count
  return None


def spaced_by_level(alphas_cumprod, spec: str) -> list[int]:
  """The timesteps of a spacing by noise level, ascending, the last T - 1.

  "logsnrN": N levels uniform in lambda = log(alpha / sigma) from lambda at
  t = 0 down to max(lambda at T - 1, LAMBDA_MIN); "karrasN": Karras et al.'s
  sigma_i = (s_max^(1/rho) + i / (N - 1) (s_min^(1/rho) - s_max^(1/rho)))^rho
  of sigma / alpha, rho = 7, from s_min at t = 0 to min(s_max at T - 1,
  80). Each level is mapped to the timestep nearest in log sigma; the
  noisiest kept step is then replaced by T - 1, where x_T ~ N(0, I) is the
  process's own start (on the cosine schedule lambda there is -9.9, sigma
  / alpha 20,000: spacing levels from there would spend steps on noise).

  Raises:
    ValueError: two levels map to one timestep (too many steps for T).
  """
  name, count = _level_spacing(spec)
  abar = np.asarray(alphas_cumprod, np.float64)
  with np.errstate(divide="ignore"):
    log_sigma = 0.5 * (np.log1p(-abar) - np.log(abar))  # increasing with t
  low, high = log_sigma[0], log_sigma[-1]
  if name == "logsnr":
    targets = np.linspace(low, min(high, -LAMBDA_MIN), count)
  else:
    s_min, s_max = np.exp(low), min(np.exp(high), KARRAS_SIGMA_MAX)
    ramp = np.linspace(0.0, 1.0, count)
    targets = np.log((s_min ** (1 / KARRAS_RHO)
                      + ramp * (s_max ** (1 / KARRAS_RHO) - s_min ** (1 / KARRAS_RHO)))
                     ** KARRAS_RHO)
  finite = np.where(np.isfinite(log_sigma), log_sigma, np.finfo(np.float64).max)
  kept = [int(np.argmin(np.abs(finite - target))) for target in targets]
  kept[-1] = abar.size - 1
  if len(set(kept)) != count:
    raise ValueError(f"respacing spec {spec!r}: {count} levels map to fewer distinct "
                     f"timesteps of {abar.size}; take fewer steps")
  return sorted(kept)


def _explicit_steps(spec: str, num_timesteps: int) -> list[int]:
  """"timesteps:999,600,0": the listed original timesteps."""
  try:
    steps = sorted({int(v) for v in spec[len("timesteps:"):].split(",")})
  except ValueError:
    raise ValueError(f"respacing spec {spec!r}: expected 'timesteps:' and comma-separated "
                     "timesteps, e.g. 'timesteps:999,500,0'") from None
  if steps[0] < 0 or steps[-1] >= num_timesteps:
    raise ValueError(f"respacing spec {spec!r}: timesteps must lie in [0, {num_timesteps})")
  return steps


def space_timesteps(num_timesteps: int, spec: str | int, alphas_cumprod=None) -> list[int]:
  """The original step indices that a respacing spec keeps, ascending.

  Args:
    num_timesteps: T of the process being respaced.
    spec: "N" or "n1,n2,...": [0, T) is cut into as many sections as counts
      (sections of T // n, the first T % n one longer) and section i keeps n_i
      evenly strided steps, its first and last included; "ddimN": the DDIM
      paper's integer stride; "fast27": "10,10,3,2,2" with the last step
      replaced by T - 3 (GLIDE's upsampler); "timesteps:999,600,0" the
      listed ones; "logsnrN" and "karrasN" levels by noise level
      (`spaced_by_level`, which needs `alphas_cumprod`).
    alphas_cumprod: [T] the schedule's, for the spacings by noise level.

  Returns:
    The sorted list of kept indices.
  """
  spec = str(spec).strip()
  if spec.startswith("timesteps:"):
    return _explicit_steps(spec, num_timesteps)
  if _level_spacing(spec) is not None:
    if alphas_cumprod is None:
      raise ValueError(f"respacing spec {spec!r} spaces by noise level: give the "
                       "schedule's alphas_cumprod")
    return spaced_by_level(alphas_cumprod, spec)
  if spec == "fast27":
    try:
      steps = space_timesteps(num_timesteps, "10,10,3,2,2")
    except ValueError:
      steps = []
    steps[-1:] = [num_timesteps - 3]
    if len(steps) != 27 or len(set(steps)) != 27:
      raise ValueError(
          f"respacing spec 'fast27' needs a longer process than {num_timesteps} steps")
    return sorted(steps)
  if spec.startswith("ddim"):
    return _ddim_steps(spec, num_timesteps)
  counts = _parse_counts(spec)
  if len(counts) > num_timesteps:
    raise ValueError(
        f"respacing spec {spec!r}: {len(counts)} sections but only {num_timesteps} steps")
  base, extra = divmod(num_timesteps, len(counts))
  steps, start = [], 0
  for i, count in enumerate(counts):
    size = base + (1 if i < extra else 0)
    steps += _section_steps(start, size, count, spec)
    start += size
  return steps


def _float64_alphas(schedule: Schedule) -> np.ndarray:
  """1 - beta in float64, each from the float32 number that holds it exactly.

  A float32 beta near 0 fixes alpha = 1 - beta to ~1e-12; a float32 alpha near
  0 (beta near 1, as in the cosine schedule's last steps) fixes itself. The
  float32 alpha_bar would lose beta = 1 - abar_k / abar_{k-1} to cancellation.
  """
  betas = np.asarray(schedule.betas, np.float64)
  return np.where(betas < 0.5, 1.0 - betas, np.asarray(schedule.alphas, np.float64))


def respace(schedule: Schedule, spec: str | int) -> Schedule:
  """A schedule that keeps only some steps of `schedule`.

  The kept steps' alpha_bar values are unchanged; the new betas are
  beta_i = 1 - alpha_bar[k_i] / alpha_bar[k_{i-1}] (alpha_bar before the first
  kept step is 1). Respacing a respaced schedule composes the timestep maps.

  Args:
    schedule: the schedule to respace (any `Schedule`).
    spec: see `space_timesteps`.

  Returns:
    The respaced `Schedule`; `.timesteps` holds original indices.
  """
  abar = np.cumprod(_float64_alphas(schedule))
  kept = space_timesteps(schedule.num_timesteps, spec, abar)
  kept_abar = abar[kept]
  betas = 1.0 - kept_abar / np.append(1.0, kept_abar[:-1])
  timesteps = np.asarray(schedule.timesteps)[kept]
  return schedule_from_betas(betas, timesteps)
