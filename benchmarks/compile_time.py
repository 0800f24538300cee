"""How long the quick model's train step takes to compile, and what its
state arrays cost: the library's step against two peers in the same run.

The quick class-conditional config (configs/shapes_class_cond.py:quick,
16x16, 16 channels) on one device, compiled cold (no persistent cache) at
`--llvm_level` (0: the tests' `--xla_backend_optimization_level=0`):
- "cond": the library's step; its non-finite guard keeps or drops the whole
  state with one `lax.cond`;
- "where": the same step with the guard as a `jnp.where` per state array
  (how it was before commit b839418);
- "sgd_no_guard": no guard at all, and plain SGD instead of AdamW with
  gradient clipping: what the model alone costs.

Each variant is traced and compiled `--repeats` times, interleaved. Prints
one JSON object.

    python benchmarks/compile_time.py [--repeats 3] [--llvm_level 0]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

VARIANTS = ("cond", "where", "sgd_no_guard")


def where_guard(state, updated, finite):
  """The guard as it was: a `where` per state array."""
  import jax
  import jax.numpy as jnp
  kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
  streak = jnp.where(finite, 0, state.nonfinite_streak + 1)
  return kept.replace(step=state.step + 1, nonfinite_streak=streak,
                      nonfinite_total=state.nonfinite_total + (1 - finite.astype(jnp.int32)))


def build(variant, config, info):
  """The train step of `variant`, lowered for its state and a batch: traced
  afresh each call, so that no earlier compilation is reused."""
  import optax

  from conftest import one_device
  from diffusion_jax import parallel
  from diffusion_jax.data import pipeline
  from diffusion_jax.training import steps, tasks
  library_guard = steps.guard_nonfinite
  steps.guard_nonfinite = {"cond": library_guard, "where": where_guard,
                           "sgd_no_guard": lambda state, updated, finite: updated}[variant]
  try:
    task = tasks.make_task(config, info)
    if variant == "sgd_no_guard":
      optimizer = optax.sgd(1e-3)
      step, _ = tasks.STEP_BUILDERS[task.spec.kind](task.spec, optimizer, config)
      task = dataclasses.replace(task, optimizer=optimizer, train_step=step)
    mesh = one_device()
    state, shardings = task.create_state(mesh, 0)
    batch = pipeline.ImageData(config.data, seed=0, global_batch_size=config.data.batch_size,
                               example_fn=task.spec.example_fn).local_batch(0)
    jitted = tasks.compile_step(task, mesh, shardings)
    lowered = jitted.lower(state, parallel.global_batch(batch, mesh))
  finally:
    steps.guard_nonfinite = library_guard
  return lowered


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--llvm_level", type=int, default=0,
                      help="XLA's --xla_backend_optimization_level (the tests use 0)")
  args = parser.parse_args()
  os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count=1 "
                             f"--xla_backend_optimization_level={args.llvm_level}")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = ""  # before conftest sets its own
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
  import jax
  jax.config.update("jax_enable_compilation_cache", False)
  from common import emit, environment
  from conftest import quick_config
  from diffusion_jax.data import pipeline

  config = quick_config()
  info = pipeline.read_info(config.data)
  seconds = {variant: [] for variant in VARIANTS}
  for _ in range(args.repeats):
    for variant in VARIANTS:
      lowered = build(variant, config, info)
      start = time.perf_counter()
      lowered.compile()
      seconds[variant].append(round(time.perf_counter() - start, 2))
      print(variant, seconds[variant][-1], "s", file=sys.stderr, flush=True)
  means = {variant: round(statistics.mean(s), 2) for variant, s in seconds.items()}
  emit({"benchmark": "compile_time", "environment": environment(),
        "config": {"config": "shapes_class_cond:quick", "devices": 1,
                   "llvm_level": args.llvm_level, "repeats": args.repeats},
        "compile_s": seconds, "mean_s": means,
        "cond_over_where": round(means["cond"] / means["where"], 3)})


if __name__ == "__main__":
  main()
