"""Writes the diffusers reference data of tests/test_solvers.py: the x_0 that
diffusers' schedulers reach from a fixed x_T with the exact eps of the oracle
Gaussian mixture, on the cosine and the linear schedules, at the timesteps
diffusers itself chooses (stored).

The stochastic ones (Euler ancestral, DPM-Solver++ 2M SDE) draw the noise
our sampler draws at each step: `normal(fold_in(split(key(0))[1], t_index))`,
t_index the step's place in the respaced schedule (sampling._sample). It is
handed to diffusers in place of its own draws and stored beside the result.

Needs diffusers and torch (the `parity` extra; CI does not):

    pip install -e '.[parity]'
    python tests/data/diffusers_parity.py   # writes tests/data/diffusers_solvers.{npz,json}
"""
from __future__ import annotations

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from test_sampling import MIXTURE  # noqa: E402  (the oracle the tests use)

from diffusion_jax import schedules  # noqa: E402

SCHEDULES = {"cosine": "squaredcos_cap_v2", "linear": "linear"}
# DDPM's linear betas, set whole: Heun's defaults are Stable Diffusion's.
BETAS = {"beta_start": 0.0001, "beta_end": 0.02}
# our method -> (diffusers scheduler class, its arguments); the rest defaults.
SOLVERS = {"dpmpp_2m": ("DPMSolverMultistepScheduler", {"solver_order": 2}),
           "dpmpp_3m": ("DPMSolverMultistepScheduler", {"solver_order": 3}),
           "unipc": ("UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2"}),
           "dpmpp_2m_sde": ("DPMSolverMultistepScheduler",
                            {"solver_order": 2, "algorithm_type": "sde-dpmsolver++"}),
           "heun": ("HeunDiscreteScheduler", {}),
           "euler_ancestral": ("EulerAncestralDiscreteScheduler", {})}
# Where noise enters each stochastic scheduler (its module's randn_tensor).
NOISY = {"dpmpp_2m_sde": "scheduling_dpmsolver_multistep",
         "euler_ancestral": "scheduling_euler_ancestral_discrete"}
# Step counts. Heun and Euler ancestral space by "linspace" (diffusers'
# default for them), whose timesteps are whole only where 999 / (n - 1) is:
# 10 and 28 steps. Our sampler visits integer timesteps.
STEPS = {"heun": (10, 28), "euler_ancestral": (10, 28)}
DEFAULT_STEPS = (10, 20)
# diffusers' settings other than its defaults, by (schedule, method). Heun
# from t = 999 of the cosine schedule (sigma 20,291) loses 1.1e-2 of the
# largest value in float32 against the same Heun in float64, so there the
# reference starts at t = 900 ("leading": 900, 800, ..., 0).
SPACING = {("cosine", "heun"): {"timestep_spacing": "leading"}}


def our_noise(timesteps: np.ndarray, shape) -> np.ndarray:
  """[steps, *shape] the noise our sampler draws at each visited timestep,
  largest first, with key 0 (see the module docstring)."""
  loop_rng = jax.random.split(jax.random.key(0))[1]
  order = np.argsort(np.argsort(timesteps))  # each timestep's place, ascending
  return np.stack([np.asarray(jax.random.normal(jax.random.fold_in(loop_rng, int(i)), shape))
                   for i in order])


def run(kind: str, method: str, steps: int, x_T: np.ndarray):
  """diffusers' timesteps (one entry per distinct timestep, largest first),
  its x_0, and the noise it was given (empty for a deterministic one)."""
  import diffusers
  import torch
  name, kwargs = SOLVERS[method]
  scheduler = getattr(diffusers, name)(num_train_timesteps=1000,
                                       beta_schedule=SCHEDULES[kind], **BETAS, **kwargs,
                                       **SPACING.get((kind, method), {}))
  scheduler.set_timesteps(steps)
  visited = np.asarray(list(dict.fromkeys(int(t) for t in scheduler.timesteps)))
  noise = our_noise(visited, x_T.shape) if method in NOISY else np.zeros((0,))
  draws = iter(torch.from_numpy(np.array(n)) for n in noise)
  if method in NOISY:
    module = getattr(diffusers.schedulers, NOISY[method])
    module.randn_tensor = lambda *args, **kwargs: next(draws)
  model = MIXTURE.model_fn(schedules.make_schedule(kind, 1000))
  x = torch.from_numpy(np.array(x_T)) * scheduler.init_noise_sigma  # Euler/Heun work in x / alpha
  for t in scheduler.timesteps:
    scaled = scheduler.scale_model_input(x, t)  # back to x_t for the eps model
    eps = model(jnp.asarray(scaled.numpy()), jnp.full((x.shape[0],), int(t)))
    x = scheduler.step(torch.from_numpy(np.array(eps)), t, x).prev_sample
  return visited, x.numpy(), noise


def main():
  import diffusers
  import torch
  x_T = np.asarray(jax.random.normal(jax.random.key(0), (64, 2)), np.float32)
  arrays = {"x_T": x_T}
  for kind in SCHEDULES:
    for method in SOLVERS:
      for steps in STEPS.get(method, DEFAULT_STEPS):
        timesteps, x0, noise = run(kind, method, steps, x_T)
        arrays[f"{kind}/{method}/{steps}/timesteps"] = timesteps
        arrays[f"{kind}/{method}/{steps}/x0"] = x0
        arrays[f"{kind}/{method}/{steps}/noise"] = noise
  np.savez(HERE / "diffusers_solvers.npz", **arrays)
  (HERE / "diffusers_solvers.json").write_text(json.dumps({
      "command": "python tests/data/diffusers_parity.py",
      "diffusers": diffusers.__version__, "torch": torch.__version__, "jax": jax.__version__,
      "schedulers": {m: [n, k] for m, (n, k) in SOLVERS.items()},
      "schedules": SCHEDULES, "betas_of_linear": BETAS,
      "steps": {m: STEPS.get(m, DEFAULT_STEPS) for m in SOLVERS},
      "settings": {f"{k}/{m}": v for (k, m), v in SPACING.items()}}, indent=2) + "\n")


if __name__ == "__main__":
  main()
