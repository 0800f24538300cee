"""Writes the diffusers reference data of tests/test_solvers.py: the x_0 that
diffusers' multistep schedulers reach from a fixed x_T with the exact eps of
the oracle Gaussian mixture, on the cosine and the linear schedules, at the
timesteps diffusers itself chooses (stored).

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
# our method -> (diffusers scheduler class, its arguments); the rest defaults.
SOLVERS = {"dpmpp_2m": ("DPMSolverMultistepScheduler", {"solver_order": 2}),
           "dpmpp_3m": ("DPMSolverMultistepScheduler", {"solver_order": 3}),
           "unipc": ("UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2"})}
STEPS = (10, 20)


def run(kind: str, method: str, steps: int, x_T: np.ndarray):
  import diffusers
  import torch
  name, kwargs = SOLVERS[method]
  scheduler = getattr(diffusers, name)(num_train_timesteps=1000,
                                       beta_schedule=SCHEDULES[kind], **kwargs)
  scheduler.set_timesteps(steps)
  model = MIXTURE.model_fn(schedules.make_schedule(kind, 1000))
  x = torch.from_numpy(x_T)
  for t in scheduler.timesteps:
    eps = model(jnp.asarray(x.numpy()), jnp.full((x.shape[0],), int(t)))
    x = scheduler.step(torch.from_numpy(np.asarray(eps)), t, x).prev_sample
  return np.asarray(scheduler.timesteps), x.numpy()


def main():
  import diffusers
  import torch
  x_T = np.asarray(jax.random.normal(jax.random.key(0), (64, 2)), np.float32)
  arrays = {"x_T": x_T}
  for kind in SCHEDULES:
    for method in SOLVERS:
      for steps in STEPS:
        timesteps, x0 = run(kind, method, steps, x_T)
        arrays[f"{kind}/{method}/{steps}/timesteps"] = timesteps
        arrays[f"{kind}/{method}/{steps}/x0"] = x0
  np.savez(HERE / "diffusers_solvers.npz", **arrays)
  (HERE / "diffusers_solvers.json").write_text(json.dumps({
      "command": "python tests/data/diffusers_parity.py",
      "diffusers": diffusers.__version__, "torch": torch.__version__, "jax": jax.__version__,
      "schedulers": {m: [n, k] for m, (n, k) in SOLVERS.items()},
      "schedules": SCHEDULES, "steps": STEPS}, indent=2) + "\n")


if __name__ == "__main__":
  main()
