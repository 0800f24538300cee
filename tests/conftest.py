"""Test set-up: 8 simulated CPU devices and a persistent compilation cache."""
import os
import pathlib

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".cache" / "jax"
# Through the environment, so that the subprocesses the tests start (CLI runs,
# multi-process workers) share the compilation cache too.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402
import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parent.parent.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir():
  """../shared beside the checkout; tests that need it skip without it."""
  if not SHARED.is_dir():
    pytest.skip(f"{SHARED} is absent (reference test data lives there)")
  return SHARED
