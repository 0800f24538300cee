"""A train step at each side's best: JAX against the PyTorch twin, per model and precision.

Models (`MODELS`): "fixed" (train_speed.py's 32x32 benchmark UNet),
"adm64_reduced" (ADM ImageNet-64's architecture at 64 channels, the CPU
size) and "adm64" (configs/imagenet64_adm.py's network: 192 channels,
296M parameters; dropout left out on both sides, the qkv order is the
legacy one on both: the order changes no cost); and "glide_base", GLIDE's
385M-parameter text-to-image model, JAX only (the twin has no text
transformer): our real train step (`training/tasks.py`) on 128-token
captions, its FLOPs from XLA's cost analysis.

Sides, each in its own process:
- jax: the jitted step with donation (`train_speed.make_jax_step`); bf16
  compute with float32 master weights for `--precision bf16`; attention
  ours or `jax.nn.dot_product_attention` (`--jax_attention cudnn`: the
  fused GPU kernel);
- torch: the twin, eager; torch_compile: `torch.compile` on the network.
  Both channels-last on a GPU, bf16 by autocast of the forward pass (the
  loss in float32) for `--precision bf16`.

TF32 is set the same way on both sides (`--tf32`): JAX's default matmul
precision and PyTorch's `allow_tf32` flags. Each side times `--repeats`
rounds of `--steps` steps, dispatched with no host sync until a round's end.
Per run: images/s, the analytic FLOPs of a step (3 forward passes), MFU
against the device's peak for the precision (`PEAKS`; on a CPU its measured
float32 matmul throughput), the device's peak memory, and with `--profile N`
the kernels of N traced JAX steps by kind (`device_profile.py`). `--remat`
rematerializes each ResBlock on the JAX side; `--attention_resolutions`
moves attention on both.

    python benchmarks/fair_train_speed.py --models fixed,adm64_reduced --batch 16 \
        [--precision f32,bf16] [--sides jax,torch,torch_compile] [--tf32 on|off]
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

ADM64 = dict(channel_mult=(1, 2, 3, 4), num_res_blocks=3, attention_resolutions=(32, 16, 8),
             num_head_channels=64, out_channels=6)
MODELS = {
    "fixed": ((32, 32, 3), None),  # train_speed.MODEL
    "adm64_reduced": ((64, 64, 3), dict(ADM64, model_channels=64)),
    "adm64": ((64, 64, 3), dict(ADM64, model_channels=192)),
}
# Dense peak FLOP/s by device name and precision (vendor data sheets, SXM).
PEAKS = {"H100": {"bf16": 989e12, "tf32": 495e12, "f32": 67e12},
         "H200": {"bf16": 989e12, "tf32": 495e12, "f32": 67e12},
         "A100": {"bf16": 312e12, "tf32": 156e12, "f32": 19.5e12}}


def model_of(name, attention_resolutions=""):
  """(image shape, the UNet's fields) of `name`; attention_resolutions "16,8"
  overrides where it attends ("none": nowhere but the middle block)."""
  import train_speed
  image, model = MODELS[name]
  model = dict(train_speed.MODEL if model is None else model)
  if attention_resolutions:
    model["attention_resolutions"] = tuple(
        int(r) for r in attention_resolutions.split(",") if r != "none")
  return image, model


def glide_step(batch, precision, tf32, attention="", remat=False):
  """Our train step of GLIDE's base model (the library's own, not the
  benchmark's): (run, sync, facts), the facts with the train FLOPs a step."""
  import jax
  import jax.numpy as jnp
  from scaling_model import forward_flops

  from diffusion_jax import parallel
  from diffusion_jax.openai import released
  from diffusion_jax.training import tasks
  jax.config.update("jax_default_matmul_precision", "tensorfloat32" if tf32 else "highest")
  config, info = released.config_of("base", released.flags_of("base"))
  config.model.dtype = "bfloat16" if precision == "bf16" else "float32"
  config.model.attention_impl = attention
  config.model.remat = remat
  task = tasks.make_task(config, info)
  mesh = parallel.make_mesh(1, 1)
  start = time.perf_counter()
  state, shardings = task.create_state(mesh, 0)
  step = tasks.compile_step(task, mesh, shardings)
  batch_arrays = {"image": jnp.zeros((batch, 64, 64, 3), jnp.float32),
                  "tokens": jnp.ones((batch, config.model.text_ctx), jnp.int32),
                  "mask": jnp.ones((batch, config.model.text_ctx), bool)}
  holder = {"state": state}

  def run():
    holder["state"], holder["metrics"] = step(holder["state"], batch_arrays)

  def sync():
    return float(holder["metrics"]["loss"])
  flops = 3 * forward_flops(task.spec) * batch
  return run, sync, {"setup_s": round(time.perf_counter() - start, 1),
                     "jax": jax.__version__, "device": jax.devices()[0].device_kind,
                     "train_flops_per_step": flops}


def jax_step(name, batch, precision, tf32, attention="", remat=False, attend_at=""):
  """The benchmark's jitted step of `name`, compiled: (run, sync, facts)."""
  import jax
  import jax.numpy as jnp

  import train_speed
  from diffusion_jax import platform, schedules
  jax.config.update("jax_default_matmul_precision", "tensorfloat32" if tf32 else "highest")
  image, model_fields = model_of(name, attend_at)
  net = train_speed.jax_unet(model_fields, image[0]).clone(
      dtype=jnp.bfloat16 if precision == "bf16" else jnp.float32, attention_impl=attention,
      remat=remat)

  class Float32Out:  # the loss in float32 whatever the compute dtype
    @staticmethod
    def apply(variables, *args, **kwargs):
      return net.apply(variables, *args, **kwargs).astype(jnp.float32)

  sched = schedules.make_schedule("cosine", train_speed.NUM_TIMESTEPS)
  optimizer = train_speed.make_optimizer()
  images = jax.random.uniform(jax.random.key(1), (batch,) + image, minval=-1.0, maxval=1.0)
  params = jax.jit(net.init)(jax.random.key(0), images[:1], jnp.zeros(1, jnp.int32))["params"]
  opt_state = optimizer.init(params)
  start = time.perf_counter()
  compiled = train_speed.make_jax_step(Float32Out, sched, optimizer,
                                       platform.compiler_options()).lower(
      params, opt_state, images, jax.random.key(2)).compile()
  compile_s = time.perf_counter() - start
  state = {"params": params, "opt_state": opt_state, "i": 0}

  def run():
    rng = jax.random.fold_in(jax.random.key(2), state["i"])
    state["params"], state["opt_state"], state["loss"] = compiled(
        state["params"], state["opt_state"], images, rng)
    state["i"] += 1

  def sync():
    return float(state["loss"])
  return run, sync, {"compile_s": round(compile_s, 1), "jax": jax.__version__,
                     "device": jax.devices()[0].device_kind}


def torch_step(name, batch, precision, tf32, compiled, attend_at=""):
  """The twin's step of `name`, eager or compiled: (run, sync, facts). On a
  GPU at its best: channels-last, cuDNN's autotuner, the fused AdamW."""
  import torch

  import torch_unet
  import train_speed
  from diffusion_jax import schedules
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.backends.cuda.matmul.allow_tf32 = tf32
  torch.backends.cudnn.allow_tf32 = tf32
  torch.backends.cudnn.benchmark = True  # static shapes: let cuDNN pick its kernels
  image, model_fields = model_of(name, attend_at)
  torch.manual_seed(0)
  net = torch_unet.UNet(in_channels=image[2], image_size=image[0], **model_fields).to(device)
  fmt = torch.channels_last if device == "cuda" else torch.contiguous_format
  net = net.to(memory_format=fmt)
  forward = torch.compile(net) if compiled else net
  sched = torch_unet.CosineSchedule(schedules.make_schedule("cosine",
                                                            train_speed.NUM_TIMESTEPS))
  for key, value in list(vars(sched).items()):
    if isinstance(value, torch.Tensor):
      setattr(sched, key, value.to(device))
  opt = torch.optim.AdamW(net.parameters(), lr=train_speed.OPTIM["lr"],
                          weight_decay=train_speed.OPTIM["weight_decay"],
                          fused=device == "cuda")
  images = (torch.rand(batch, image[2], image[0], image[1], device=device) * 2 - 1).to(
      memory_format=fmt)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")
  last = {}

  def run():
    t = torch.randint(0, sched.num_timesteps, (batch,), device=device)
    noise = torch.randn_like(images)
    x_t = (sched.at("sqrt_alphas_cumprod", t) * images
           + sched.at("sqrt_one_minus_alphas_cumprod", t) * noise)
    with autocast:
      out = forward(x_t, t)
    loss = torch_unet.hybrid_loss(sched, out.float(), images, t, noise).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), train_speed.OPTIM["clip"])
    opt.step()
    last["loss"] = loss.detach()

  def sync():
    return float(last["loss"])  # blocks
  name_ = torch.cuda.get_device_name() if device == "cuda" else "cpu"
  return run, sync, {"torch": torch.__version__, "device": name_, "channels_last": device == "cuda",
               "threads": torch.get_num_threads()}


def peak_memory_bytes(side: str):
  """The device's peak memory in use so far, or None where it is not known."""
  if side == "jax":
    import jax
    return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  import torch
  return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def child(args) -> dict:
  """One side's figures: `--repeats` rounds of `--steps` steps, each round
  dispatched without a host sync until its end; the step time is the
  median round's mean."""
  from common import gpu_turn
  tf32 = args.tf32 == "on"
  if args.side == "jax" and args.model == "glide_base":
    run, sync, facts = glide_step(args.batch, args.precision_one, tf32, args.jax_attention,
                                  args.remat)
  elif args.side == "jax":
    run, sync, facts = jax_step(args.model, args.batch, args.precision_one, tf32,
                                args.jax_attention, args.remat, args.attention_resolutions)
  else:
    run, sync, facts = torch_step(args.model, args.batch, args.precision_one, tf32,
                                  args.side == "torch_compile", args.attention_resolutions)
  if args.side == "jax":
    facts.update(attention=args.jax_attention or "ours", remat=args.remat)
  start = time.perf_counter()
  run()
  sync()
  facts["first_step_s"] = round(time.perf_counter() - start, 2)  # torch.compile's compile
  with gpu_turn():
    run()
    sync()
    rounds = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      for _ in range(args.steps):
        run()
      loss = sync()
      rounds.append((time.perf_counter() - start) / args.steps)
    if args.profile and args.side == "jax":
      import device_profile

      def one_step():
        run()
        sync()
      facts["profile"] = device_profile.summarize(one_step, args.profile)
  if not math.isfinite(loss):
    raise FloatingPointError(f"the loss is {loss} after {args.repeats * args.steps + 2} steps")
  return {**facts, "step_s": statistics.median(rounds), "rounds": [round(t, 4) for t in rounds],
          "last_loss": round(loss, 4), "peak_memory_bytes": peak_memory_bytes(args.side)}


@functools.cache
def peak(device: str, precision: str, tf32: bool):
  """(peak FLOP/s, where the figure comes from); a CPU's is measured once a run."""
  key = "bf16" if precision == "bf16" else ("tf32" if tf32 else "f32")
  for name, table in PEAKS.items():
    if name in device:
      return table[key], f"{name} {key} (data sheet)"
  if "cpu" in device.lower():
    from scaling_model import matmul_flops_per_s
    return matmul_flops_per_s(), "measured float32 matmul"
  return None, "unknown device"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="fixed,adm64_reduced")
  parser.add_argument("--precision", default="f32")
  parser.add_argument("--sides", default="jax,torch,torch_compile")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=3, help="steps a timed round")
  parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
  parser.add_argument("--attention_resolutions", default="",
                      help='where both sides attend, e.g. "16,8" (default: the model\'s)')
  parser.add_argument("--remat", action="store_true", help="the JAX side rematerializes "
                      "each ResBlock (model.remat)")
  parser.add_argument("--profile", type=int, default=0,
                      help="trace this many JAX steps and sum the device's kernels")
  parser.add_argument("--tf32", default="off", choices=["on", "off"])
  parser.add_argument("--jax_attention", default="", choices=["", "xla", "cudnn"],
                      help="the JAX side's attention (model.attention_impl)")
  parser.add_argument("--out", default="")
  parser.add_argument("--side", help=argparse.SUPPRESS)
  parser.add_argument("--model", help=argparse.SUPPRESS)
  parser.add_argument("--precision_one", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.side:
    print(json.dumps(child(args)))
    return
  import train_speed
  from common import emit, environment
  rows = []
  for model in args.models.split(","):
    flops, attends = None, None
    if model != "glide_base":  # its FLOPs come from the run (XLA's count)
      image, fields = model_of(model, args.attention_resolutions)
      flops = 3 * train_speed.forward_flops_per_image(fields, image) * args.batch
      attends = list(fields["attention_resolutions"])
    for precision in args.precision.split(","):
      row = {"model": model, "precision": precision, "batch": args.batch,
             "remat": args.remat, "attention_resolutions": attends,
             "train_flops_per_step": flops}
      sides = ["jax"] if model == "glide_base" else args.sides.split(",")
      for side in sides:
        cmd = [sys.executable, os.path.abspath(__file__), f"--side={side}",
               f"--model={model}", f"--precision_one={precision}", f"--batch={args.batch}",
               f"--steps={args.steps}", f"--repeats={args.repeats}", f"--tf32={args.tf32}",
               f"--jax_attention={args.jax_attention}", f"--profile={args.profile}"]
        cmd += ["--remat"] if args.remat else []
        cmd += [f"--attention_resolutions={args.attention_resolutions}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
          row[side] = {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
        else:
          result = json.loads(done.stdout.strip().splitlines()[-1])
          flops = row["train_flops_per_step"] = result.pop("train_flops_per_step", flops)
          top, basis = peak(result["device"], precision, args.tf32 == "on")
          result["images_per_s"] = round(args.batch / result["step_s"], 2)
          result["mfu"] = None if top is None else round(flops / result["step_s"] / top, 4)
          result["peak_basis"], result["peak_flops"] = basis, top
          row[side] = result
        print(json.dumps({model: {side: row[side]}}), file=sys.stderr, flush=True)
      torch_times = [row[s]["step_s"] for s in ("torch", "torch_compile")
                     if "step_s" in row.get(s, {})]
      if "step_s" in row.get("jax", {}) and torch_times:
        row["jax_over_best_torch_step_time"] = round(row["jax"]["step_s"] / min(torch_times), 3)
      rows.append(row)
  report = {"benchmark": "fair_train_speed", "environment": environment(),
            "tf32": args.tf32, "results": rows}
  emit(report, args.out)


if __name__ == "__main__":
  main()
