"""The solvers' convergence to the probability-flow ODE on the exact
denoiser of a Gaussian mixture: docs/samplers.md.

For the cosine and the linear schedules, 512 starting noises are run to
x_0 by each deterministic method at 10-160 uniformly respaced steps, and
compared with the ODE's solution (Heun over all 1000 steps; DPM-Solver++ 3M
there agrees with it to 6e-5). Prints JSON: the RMS error per point, the
fitted order over 20-80 steps, and the network evaluations.

    python benchmarks/solver_order.py --out=benchmarks/results/solver_order.json
"""
from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from common import emit, environment  # noqa: E402
from diffusion_jax import oracles, sampling, schedules  # noqa: E402

MIXTURE = oracles.GaussianMixture(weights=[0.5, 0.3, 0.2],
                                  means=[[1.0, 1.0], [-1.0, 0.0], [0.5, -1.0]],
                                  stds=[0.15, 0.25, 0.2])
METHODS = ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "heun")
STEPS = (10, 20, 40, 80, 160)


def evaluations(method: str, steps: int) -> int:
  return 2 * steps - 2 if method == "heun" else steps  # Heun: Euler at the two ends


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  report = {"benchmark": "solver_order", "environment": environment(), "schedules": {}}
  for kind in ("cosine", "linear"):
    base = schedules.make_schedule(kind, 1000)
    model = MIXTURE.model_fn(base)
    x_T = jax.random.normal(jax.random.key(0), (512, 2))

    def solve(method, steps, x_T=x_T, base=base, model=model):
      return np.asarray(sampling.sample(model, schedules.respace(base, str(steps)), (512, 2),
                                        jax.random.key(1), method=method, x_T=x_T,
                                        clip_denoised=False))
    reference = solve("heun", 1000)
    rows = {}
    for method in METHODS:
      errors = [float(np.sqrt(np.mean((solve(method, n) - reference) ** 2))) for n in STEPS]
      fit = [i for i, n in enumerate(STEPS) if 20 <= n <= 80]
      order = -np.polyfit(np.log(np.take(STEPS, fit)), np.log(np.take(errors, fit)), 1)[0]
      rows[method] = {"steps": list(STEPS), "evaluations": [evaluations(method, n) for n in STEPS],
                      "rms_error": [round(e, 6) for e in errors], "order_20_80": round(order, 2)}
    report["schedules"][kind] = rows
  emit(report, args.out)


if __name__ == "__main__":
  main()
