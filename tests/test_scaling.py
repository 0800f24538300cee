"""The scaling model (benchmarks/scaling_model.py) against the compiled program.

Its communication counts are held against the collectives XLA compiles into
the real sharded train step on 8 simulated devices, and its FLOP count
against the analytic count of the benchmark UNet (which itself equals
PyTorch's FLOP counter on the twin, tests/test_torch_twin.py).
"""
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import scaling_model  # noqa: E402

import train_speed  # noqa: E402


def test_collectives_are_read_from_hlo_text():
  text = "\n".join([
      "  %a = (f32[16]{0}, f32[64,64]{1,0}, /*index=2*/bf16[8]{0}) all-reduce(%x), channel_id=1",
      "  %b = f32[3,3,32,16]{3,2,1,0} all-gather(%y), dimensions={0}",
      "  %c = f32[4]{0} all-gather-start(%z)",
      "  %d = f32[4]{0} add(%p, %q)",
      "  %e = s32[2,2]{1,0} all-to-all(%w), dimensions={0}"])
  got = scaling_model.hlo_collectives(text)
  assert got == {"all-reduce": {"count": 1, "bytes": 4 * (16 + 64 * 64) + 2 * 8},
                 "all-gather": {"count": 2, "bytes": 4 * (3 * 3 * 32 * 16 + 4)},
                 "all-to-all": {"count": 1, "bytes": 16}}


def test_ring_traffic_per_device():
  p = 1000.0
  assert scaling_model.traffic_per_device(p, 8, 1)["all-reduce"] == 2 * 7 / 8 * p
  fsdp = scaling_model.traffic_per_device(p, 1, 8)
  assert (fsdp["all-gather"], fsdp["reduce-scatter"], fsdp["all-reduce"]) == (
      2 * 7 / 8 * p, 7 / 8 * p, 0.0)
  mixed = scaling_model.traffic_per_device(p, 2, 4)
  assert mixed["all-reduce"] == 2 * 1 / 2 * p / 4 and mixed["all-gather"] == 2 * 3 / 4 * p


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [(8, 1), (2, 4)])
def test_model_payloads_match_the_compiled_step(mesh):
  """Data parallel (the quick config: it compiles fastest): one all-reduce
  of exactly the gradients (and the step's two scalar metrics). FSDP (the
  main job's config: the quick model's tiny kernels make XLA gather
  activations instead): two gathers of each sharded weight, and a gradient
  reduction of P (1 + 1/fsdp), within 15% (XLA also gathers a few
  activations, and XLA:CPU reduces with all-reduce and all-to-all)."""
  config, info = scaling_model.main_job_config()
  if mesh == (8, 1):
    from conftest import quick_config
    config = quick_config()
  text, sizes = scaling_model.compiled_step_text(config, info, *mesh)
  got = scaling_model.measured_payload(scaling_model.hlo_collectives(text))
  want = scaling_model.predicted_payload(sizes["param_bytes"], sizes["sharded_param_bytes"],
                                         *mesh)
  if mesh == (8, 1):
    assert got["weight all-gathers"] == 0
    assert 0 <= got["gradient reduction"] - sizes["param_bytes"] <= 16
  else:
    for role in want:
      assert abs(got[role] / want[role] - 1) < 0.15, (role, got, want)


def test_xla_counts_no_multiply_adds_with_the_zero_padding():
  """XLA's cost analysis counts a 3x3 SAME convolution's real multiply-adds:
  on 32x32, (94/96)^2 of the nominal 2 HW Cin Cout 9."""
  import jax
  import jax.numpy as jnp
  x = jax.ShapeDtypeStruct((1, 32, 32, 64), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 64, 64), jnp.float32)
  conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  cost = jax.jit(conv).lower(x, w).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert cost["flops"] == pytest.approx(2 * 32 * 32 * 64 * 64 * 9 * (94 / 96) ** 2)


def test_xla_flops_of_the_unet_are_the_analytic_flops_less_the_padding():
  """The benchmark UNet: XLA's count is the analytic (nominal) count less
  the padding taps (4-16% of a 3x3 convolution from 32x32 down to 8x8),
  plus the elementwise ops that the analytic count leaves out."""
  from diffusion_jax import config_lib
  from diffusion_jax.data.pipeline import DatasetInfo
  from diffusion_jax.inference.spec import make_spec
  c = config_lib.base_config()
  m = train_speed.MODEL
  c.model.channels, c.model.channel_mult = m["model_channels"], m["channel_mult"]
  c.model.num_res_blocks, c.model.attention_resolutions = m["num_res_blocks"], (16, 8)
  c.model.num_heads, c.model.learn_sigma, c.model.class_conditional = 4, True, False
  spec = make_spec(c, DatasetInfo(32, 3, None, 0))
  ratio = scaling_model.forward_flops(spec) / train_speed.forward_flops_per_image()
  assert 0.9 < ratio < 1.0, ratio
