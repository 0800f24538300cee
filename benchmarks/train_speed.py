"""How fast one training step of the ADM UNet runs: Flax/JAX against a PyTorch twin.

A fixed config: 32x32x3 images, model_channels 64, channel_mult (1, 2, 2),
2 ResBlocks a level, attention at 16x16 and 8x8 with 4 heads of 32 channels,
learned sigma (6 output channels) trained with the hybrid loss (eps MSE +
0.001 T L_vlb), cosine schedule T = 1000, batch 64, AdamW (lr 1e-4, weight
decay 0.01) after clipping the global gradient norm to 1.0, float32. Both
sides sample t and the noise inside the step. The PyTorch twin
(`torch_unet.py`) is the same function (`tests/test_torch_twin.py`). Prints
one JSON object; `jax_over_torch_step_time` below 1 means JAX is faster.

    python benchmarks/train_speed.py [--batch 64] [--steps 8] [--repeats 3] [--skip_torch]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from common import environment  # noqa: E402
from diffusion_jax import diffusion, schedules  # noqa: E402
from diffusion_jax.models import UNet  # noqa: E402

IMAGE = (32, 32, 3)
MODEL = dict(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
             attention_resolutions=(16, 8), num_heads=4, out_channels=6)
OPTIM = dict(lr=1e-4, weight_decay=0.01, clip=1.0)
NUM_TIMESTEPS = 1000
# XLA:CPU hands convolutions to YNNPACK by default, whose weight-gradient
# convolutions (a 32x32 "window" over the activations) run at ~10 GFLOP/s;
# keeping YNNPACK for matmuls and reductions only sends convolutions to
# Eigen, 3x faster for a conv's forward + backward. Set per jit, not by
# XLA_FLAGS (the same as XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=
# -individual_convolution).
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def make_optimizer() -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW (torch.optim.AdamW's defaults otherwise)."""
  return optax.chain(optax.clip_by_global_norm(OPTIM["clip"]),
                     optax.adamw(OPTIM["lr"], b1=0.9, b2=0.999, eps=1e-8,
                                 weight_decay=OPTIM["weight_decay"]))


def make_jax_step(model: UNet, sched: schedules.Schedule,
                  optimizer: optax.GradientTransformation, compiler_options=None):
  """A jitted train step (params, opt_state, batch, rng) -> (params, opt_state, loss).

  batch: [B, H, W, C] images in [-1, 1]. Samples t uniformly and the noise,
  takes the mean hybrid loss, and donates params and opt_state.
  compiler_options: XLA options for this jit (e.g. `CPU_COMPILER_OPTIONS`).
  """
  def loss_fn(params, x0, rng):
    t_rng, noise_rng = jax.random.split(rng)
    t, _ = diffusion.sample_timesteps(t_rng, x0.shape[0], sched.num_timesteps)
    noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
    x_t = diffusion.q_sample(sched, x0, t, noise)
    out = model.apply({"params": params}, x_t, sched.timesteps[t], train=True)
    losses = diffusion.training_losses(sched, out, x0, t, noise, parameterization="eps",
                                       variance="learned_range")
    return jnp.mean(losses["loss"])

  def step(params, opt_state, batch, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1), compiler_options=compiler_options)


# ------------------------------------------------------------------- FLOPs --

def forward_flops_per_image() -> int:
  """Matmul FLOPs (2 per multiply-add) of one image's forward pass, counted
  from the architecture: convolutions, dense layers, attention's q k^T and
  weights v. Norms, activations and the loss are not counted."""
  mc, emb, size = MODEL["model_channels"], 4 * MODEL["model_channels"], IMAGE[0]
  conv = lambda hw, cin, cout, k=3: 2 * hw * hw * cin * cout * k * k  # noqa: E731

  def res(hw, cin, cout, resample=1.0):
    hw = int(hw * resample)  # the conv runs after the up/down sampling
    skip = conv(hw, cin, cout, 1) if cin != cout else 0
    return conv(hw, cin, cout) + conv(hw, cout, cout) + 2 * emb * 2 * cout + skip

  def attn(hw, c):
    length = hw * hw
    return 2 * length * c * 4 * c + 2 * 2 * length * length * c  # qkv + proj, two matmuls

  attends = lambda hw: hw in MODEL["attention_resolutions"]  # noqa: E731
  total = 2 * mc * emb + 2 * emb * emb + conv(size, IMAGE[2], mc)
  ch, hw, skips = mc, size, [mc]
  for level, mult in enumerate(MODEL["channel_mult"]):
    for _ in range(MODEL["num_res_blocks"]):
      total += res(hw, ch, mc * mult) + (attn(hw, mc * mult) if attends(hw) else 0)
      ch = mc * mult
      skips.append(ch)
    if level != len(MODEL["channel_mult"]) - 1:
      total += res(hw, ch, ch, 0.5)
      hw //= 2
      skips.append(ch)
  total += 2 * res(hw, ch, ch) + attn(hw, ch)
  for level, mult in reversed(list(enumerate(MODEL["channel_mult"]))):
    for i in range(MODEL["num_res_blocks"] + 1):
      total += res(hw, ch + skips.pop(), mc * mult)
      ch = mc * mult
      total += attn(hw, ch) if attends(hw) else 0
      if level and i == MODEL["num_res_blocks"]:
        total += res(hw, ch, ch, 2.0)
        hw *= 2
  return total + conv(size, ch, MODEL["out_channels"])


# ----------------------------------------------------------------- timing --

def summarise(times: list[float], batch: int, flops: float) -> dict:
  median = statistics.median(times)
  return {"step_s_median": round(median, 4), "step_s_best": round(min(times), 4),
          "step_s_all": [round(s, 4) for s in times],
          "images_per_s": round(batch / median, 1),
          "gflop_per_s": round(flops / median / 1e9, 2)}


def busy_cpu_seconds() -> float | None:
  """CPU seconds all processes have run (user + system), from /proc/stat."""
  try:
    with open("/proc/stat") as f:
      fields = [int(v) for v in f.readline().split()[1:]]
  except OSError:
    return None
  user, nice, system, _, _, irq, softirq = fields[:7]
  return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def timed_run(run_step, steps: int) -> tuple[float, float | None]:
  """Seconds per step over `steps` consecutive steps (run_step must block),
  and the share of the machine's cores that other processes used meanwhile
  (None where /proc/stat is missing)."""
  busy, own = busy_cpu_seconds(), sum(os.times()[:2])
  start = time.perf_counter()
  for _ in range(steps):
    run_step()
  seconds = time.perf_counter() - start
  others = None
  if busy is not None:
    others = busy_cpu_seconds() - busy - (sum(os.times()[:2]) - own)
    others = round(max(0.0, others) / (seconds * os.cpu_count()), 3)
  return seconds / steps, others


def jax_runner(batch: int, compiler_options):
  """(run_step, facts): a compiled JAX step on fixed images, and its compile
  time, parameter count and XLA's FLOP estimate."""
  model, sched = UNet(**MODEL), schedules.make_schedule("cosine", NUM_TIMESTEPS)
  optimizer = make_optimizer()
  images = jax.random.uniform(jax.random.key(1), (batch,) + IMAGE, minval=-1.0, maxval=1.0)
  params = jax.jit(model.init)(jax.random.key(0), images[:1], jnp.zeros(1, jnp.int32))["params"]
  opt_state = optimizer.init(params)
  start = time.perf_counter()
  compiled = make_jax_step(model, sched, optimizer, compiler_options).lower(
      params, opt_state, images, jax.random.key(2)).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  state = {"params": params, "opt_state": opt_state, "i": 0}

  def run_step():
    rng = jax.random.fold_in(jax.random.key(2), state["i"])
    state["params"], state["opt_state"], loss = compiled(
        state["params"], state["opt_state"], images, rng)
    state["i"] += 1
    return float(loss)  # blocks

  facts = {"compile_s": round(compile_s, 2), "compiler_options": compiler_options,
           "params": int(sum(p.size for p in jax.tree.leaves(params))),
           "xla_cost_analysis_flops": float(cost.get("flops", float("nan")))}
  return run_step, facts


def torch_runner(batch: int, threads: int):
  """(run_step, facts) for the PyTorch twin with `threads` intra-op threads."""
  import torch
  import torch_unet
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = torch_unet.UNet(in_channels=IMAGE[2], image_size=IMAGE[0], **MODEL)
  sched = torch_unet.CosineSchedule(schedules.make_schedule("cosine", NUM_TIMESTEPS))
  step = torch_unet.make_torch_step(model, sched, **OPTIM)
  images = torch.rand(batch, IMAGE[2], IMAGE[0], IMAGE[1]) * 2 - 1
  facts = {"params": int(sum(p.numel() for p in model.parameters())),
           "threads": torch.get_num_threads(), "torch": torch.__version__}
  return lambda: float(step(images)), facts


def bench(runners: dict, steps: int, repeats: int):
  """Times each runner: 2 warm-up steps, then `repeats` rounds that time
  `steps` steps of each runner in turn, so that all see the same machine load.

  Returns:
    ({name: [seconds per step, one per round]}, {name: [others' CPU share]},
     {name: first loss}).
  """
  times = {name: [] for name in runners}
  load = {name: [] for name in runners}
  first_loss = {name: run() for name, run in runners.items()}
  for run in runners.values():
    run()
  for _ in range(repeats):
    for name, run in runners.items():
      seconds, others = timed_run(run, steps)
      times[name].append(seconds)
      load[name].append(others)
  return times, load, first_loss


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=5, help="steps per timed run")
  parser.add_argument("--repeats", type=int, default=3, help="timed runs")
  parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                      help="torch threads (JAX's CPU client uses every core)")
  parser.add_argument("--skip_torch", action="store_true")
  parser.add_argument("--ynn_convolutions", action="store_true",
                      help="keep XLA:CPU's default (YNNPACK) convolutions")
  args = parser.parse_args()
  on_cpu = jax.default_backend() == "cpu" and not args.ynn_convolutions
  options = CPU_COMPILER_OPTIONS if on_cpu else None
  flops = 3 * forward_flops_per_image() * args.batch
  runners, facts = {}, {}
  runners["jax"], facts["jax"] = jax_runner(args.batch, options)
  if not args.skip_torch:
    runners["torch"], facts["torch"] = torch_runner(args.batch, args.threads)
  times, load, first_loss = bench(runners, args.steps, args.repeats)
  out = {
      "benchmark": "train_speed",
      "config": {"image": list(IMAGE), **MODEL, "num_head_channels": 32, "batch": args.batch,
                 "loss": "hybrid (eps MSE + 0.001 T L_vlb), learned_range sigma",
                 "schedule": f"cosine T={NUM_TIMESTEPS}", "optimizer": OPTIM,
                 "dtype": "float32", "steps": args.steps, "repeats": args.repeats},
      "environment": {**environment(), "cores": len(os.sched_getaffinity(0)),
                      "xla_flags": os.environ.get("XLA_FLAGS", "")},
      "flops_per_step": {"analytic": flops,
                         "method": "forward conv/dense/attention matmul FLOPs counted "
                                   "from the architecture, x3 for forward + backward"},
  }
  for name in runners:
    out[name] = {**facts[name], **summarise(times[name], args.batch, flops),
                 "other_processes_cpu_share": load[name],
                 "first_loss": round(first_loss[name], 4)}
  if not args.skip_torch:
    out["jax_over_torch_step_time"] = round(
        out["jax"]["step_s_median"] / out["torch"]["step_s_median"], 3)
    out["jax_over_torch_each_round"] = [
        round(j / t, 3) for j, t in zip(times["jax"], times["torch"])]
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  main()
