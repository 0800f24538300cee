"""Per-backend XLA settings that the library's compiled steps use."""
from __future__ import annotations

import functools
import logging
from typing import Optional

import jax
import jax.numpy as jnp

# XLA:CPU hands convolutions to YNNPACK by default, whose weight-gradient
# convolutions run at ~10 GFLOP/s; keeping YNNPACK for matmuls and
# reductions only sends convolutions to Eigen, which makes a UNet train step
# about twice as fast (benchmarks/README.md). The same as XLA_FLAGS=
# --xla_cpu_experimental_ynn_fusion_type=-individual_convolution, but per jit.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


@functools.lru_cache(maxsize=None)
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
