"""The per-backend XLA options of the library's compiled steps."""
import logging

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import platform


def test_cpu_steps_compile_with_eigen_convolutions():
  """On the CPU the options are returned, and a convolution compiled with
  them leaves YNNPACK (its HLO has no YNN fusion around the convolution)."""
  options = platform.compiler_options()
  assert options == platform.CPU_COMPILER_OPTIONS
  x, w = jnp.ones((8, 32, 32, 64)), jnp.ones((3, 3, 64, 64))  # compiled, never run
  conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  default = jax.jit(conv).lower(x, w).compile().as_text()
  ours = jax.jit(conv, compiler_options=options).lower(x, w).compile().as_text()
  assert "ynn_fusion" in default and "ynn_fusion" not in ours
  assert "ynn_fusion" not in platform.jit(conv).lower(x, w).compile().as_text()


def test_options_a_jaxlib_rejects_are_dropped_with_a_warning(monkeypatch, caplog):
  monkeypatch.setattr(platform, "CPU_COMPILER_OPTIONS",
                      {"xla_cpu_experimental_ynn_fusion_type": "NOT_A_FUSION_TYPE"})
  platform._accepted.cache_clear()
  try:
    with caplog.at_level(logging.WARNING):
      assert platform.compiler_options() is None
    assert "did not take" in caplog.text
  finally:
    platform._accepted.cache_clear()


def test_jit_takes_the_options_at_the_top_level_and_nests_without_them():
  traced = []

  def double(x):
    traced.append(1)
    return 2 * x

  fast = platform.jit(double)
  np.testing.assert_array_equal(fast(jnp.arange(3.0)), [0.0, 2.0, 4.0])
  np.testing.assert_array_equal(jax.jit(lambda x: fast(x) + 1)(jnp.ones(2)), [3.0, 3.0])
  assert float(jax.grad(lambda x: fast(x))(1.0)) == 2.0
  np.testing.assert_array_equal(jax.vmap(fast)(jnp.ones((2, 2))), np.full((2, 2), 2.0))
  calls = len(traced)
  fast(jnp.arange(3.0))  # compiled already: no new trace
  assert len(traced) == calls
