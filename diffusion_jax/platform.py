"""Per-backend XLA settings that the library's compiled steps use."""
from __future__ import annotations

import functools
import logging
from typing import Callable, Optional

import jax
import jax.numpy as jnp

# XLA:CPU hands convolutions to YNNPACK by default, whose weight-gradient
# convolutions run at ~10 GFLOP/s; keeping YNNPACK for matmuls and
# reductions only sends convolutions to Eigen, which makes a UNet train step
# about twice as fast (benchmarks/README.md). The same as XLA_FLAGS=
# --xla_cpu_experimental_ynn_fusion_type=-individual_convolution, but per jit.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def _accepted() -> bool:
  """Whether this jaxlib's CPU compiler takes CPU_COMPILER_OPTIONS."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(
        jnp.zeros(2)).compile()
    return True
  except Exception as error:  # an unknown option or value: compile without them
    logging.warning("XLA:CPU did not take %s (%s); compiling with its defaults",
                    CPU_COMPILER_OPTIONS, str(error).splitlines()[0])
    return False


def compiler_options() -> Optional[dict]:
  """The XLA compiler options for compiled steps on the default backend:
  `CPU_COMPILER_OPTIONS` on the CPU (where this jaxlib accepts them), else None."""
  if jax.default_backend() == "cpu" and _accepted():
    return dict(CPU_COMPILER_OPTIONS)
  return None


# Programs that run once (initialising a train state) are compiled without
# LLVM's optimisations on the CPU: the quick model's init compiles in 3.3 s
# instead of 8.8 s, and runs in milliseconds either way.
RUN_ONCE_CPU_OPTIONS = {"xla_backend_optimization_level": 0}


def run_once_compiler_options() -> Optional[dict]:
  """Compiler options for a program that runs once: `RUN_ONCE_CPU_OPTIONS`
  on the CPU, else None."""
  if jax.default_backend() == "cpu":
    return dict(RUN_ONCE_CPU_OPTIONS)
  return None


def jit(fun: Callable, **jit_kwargs) -> Callable:
  """`jax.jit(fun, **jit_kwargs)` with `compiler_options()` where it is called
  at the top level.

  The options are looked up at the first call, so a module can decorate its
  functions at import without starting a backend (which must wait for
  `jax.distributed.initialize`). Called inside another `jax.jit` (or `grad`),
  which JAX allows no options on, it is a plain `jax.jit`: the enclosing
  program's options apply.
  """
  plain = jax.jit(fun, **jit_kwargs)

  @functools.cache
  def top_level():
    options = compiler_options()
    return jax.jit(fun, compiler_options=options, **jit_kwargs) if options else plain

  @functools.wraps(fun)
  def call(*args, **kwargs):
    tuned = top_level()
    if tuned is not plain:
      try:
        return tuned(*args, **kwargs)
      except ValueError as error:  # "can only be passed to top-level jax.jit"
        if "compiler_options" not in str(error):
          raise
    return plain(*args, **kwargs)  # the trace is shared: nothing is traced twice
  call.lower = lambda *args, **kwargs: top_level().lower(*args, **kwargs)
  return call
