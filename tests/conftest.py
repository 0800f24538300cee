"""Test set-up: 8 simulated CPU devices and a persistent compilation cache."""
import os
import pathlib

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".cache" / "jax"
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

SHARED = pathlib.Path(__file__).resolve().parent.parent.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir():
  """../shared beside the checkout; tests that need it skip without it."""
  if not SHARED.is_dir():
    pytest.skip(f"{SHARED} is absent (reference test data lives there)")
  return SHARED
