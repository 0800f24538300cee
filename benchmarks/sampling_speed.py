"""How much the sampling loop itself costs: compiled `lax.scan` vs a Python loop.

A 100-step DDIM loop with a trivial model (eps = 0.1 x), so the figures are
the sampler's own arithmetic and dispatch, for batch 1 and 256 of 64x64x3.
"compiled" is `sampling.sample` (one program); "python_loop" calls a jitted
`sampling.ddim_step` 100 times from Python. Prints one JSON object.

    python benchmarks/sampling_speed.py [--steps 100] [--batches 1,256]
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from common import best_of, environment  # noqa: E402
from diffusion_jax import sampling, schedules  # noqa: E402


def trivial_model(x, t):
  del t
  return 0.1 * x


def compiled_runner(schedule, shape, eta):
  def run():
    return sampling.sample(trivial_model, schedule, shape, jax.random.key(0),
                           method="ddim", eta=eta).block_until_ready()
  return run


def python_loop_runner(schedule, shape, eta):
  opts = sampling.StepOptions()

  @jax.jit
  def step(x, i, rng):
    t = jnp.full((shape[0],), i, jnp.int32)
    return sampling.ddim_step(trivial_model, schedule, x, t,
                              jax.random.fold_in(rng, i), eta, opts)[0]

  def run():
    rng = jax.random.key(0)
    x = jax.random.normal(rng, shape)
    for i in range(schedule.num_timesteps - 1, -1, -1):
      x = step(x, i, rng)
    return x.block_until_ready()
  return run


def measure(make_runner, schedule, shape, eta, repeats):
  run = make_runner(schedule, shape, eta)
  start = time.perf_counter()
  run()  # compiles
  first = time.perf_counter() - start
  seconds = best_of(run, repeats)
  return {"first_call_s": round(first, 4), "loop_s": round(seconds, 5),
          "steps_per_s": round(schedule.num_timesteps / seconds, 1)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--batches", default="1,256")
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--eta", type=float, default=0.0)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  schedule = schedules.respace(schedules.make_schedule("cosine", 1000), str(args.steps))
  results = []
  for batch in (int(b) for b in args.batches.split(",")):
    shape = (batch, args.image_size, args.image_size, 3)
    compiled = measure(compiled_runner, schedule, shape, args.eta, args.repeats)
    python = measure(python_loop_runner, schedule, shape, args.eta, args.repeats)
    results.append({
        "batch": batch, "compiled": compiled, "python_loop": python,
        "compiled_over_python_time": round(compiled["loop_s"] / python["loop_s"], 3)})
  print(json.dumps({
      "benchmark": "sampling_speed",
      "config": {"method": "ddim", "eta": args.eta, "steps": args.steps,
                 "image": [args.image_size, args.image_size, 3],
                 "model": "eps = 0.1 * x", "repeats": args.repeats},
      "environment": environment(),
      "results": results,
  }, indent=2))


if __name__ == "__main__":
  main()
