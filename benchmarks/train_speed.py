"""How fast one training step of the ADM UNet runs: Flax/JAX against a PyTorch twin.

A fixed config: 32x32x3 images, model_channels 64, channel_mult (1, 2, 2),
2 ResBlocks a level, attention at 16x16 and 8x8 with 4 heads of 32 channels,
learned sigma (6 output channels) trained with the hybrid loss (eps MSE +
0.001 T L_vlb), cosine schedule T = 1000, batch 64, AdamW (lr 1e-4, weight
decay 0.01) after clipping the global gradient norm to 1.0, float32. Both
sides sample t and the noise inside the step. The PyTorch twin
(`torch_unet.py`) is the same function (`tests/test_torch_twin.py`). Prints
one JSON object; `jax_over_torch_step_time` below 1 means JAX is faster.
Each framework runs in a process of its own, alternating, `--repeats` times;
`--allocators system,tcmalloc` repeats the comparison with tcmalloc preloaded
into both (see benchmarks/README.md for why the allocator matters).

    python benchmarks/train_speed.py [--batch 64] [--steps 4] [--repeats 3]
        [--allocators system,tcmalloc] [--skip_torch]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from common import environment  # noqa: E402
from diffusion_jax import diffusion, platform, schedules  # noqa: E402
from diffusion_jax.models import UNet  # noqa: E402
from diffusion_jax.models.unet import attention_ds_of  # noqa: E402

IMAGE = (32, 32, 3)
MODEL = dict(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
             attention_resolutions=(16, 8), num_heads=4, out_channels=6)
OPTIM = dict(lr=1e-4, weight_decay=0.01, clip=1.0)
NUM_TIMESTEPS = 1000


def jax_unet(model: dict | None = None, image_size: int = IMAGE[0]) -> UNet:
  """The benchmark's UNet (or `model`'s fields) in Flax: attention from pixels
  to downsampling factors."""
  model = MODEL if model is None else model
  kwargs = {k: v for k, v in model.items() if k != "attention_resolutions"}
  return UNet(attention_ds=attention_ds_of(model["attention_resolutions"], image_size,
                                           len(model["channel_mult"])), **kwargs)



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
  compiler_options: XLA options for this jit (e.g. `platform.compiler_options()`).
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

def forward_flops_per_image(model: dict | None = None, image: tuple | None = None) -> int:
  """Matmul FLOPs (2 per multiply-add) of one image's forward pass, counted
  from the architecture (`MODEL` and `IMAGE` unless given): convolutions,
  dense layers, attention's q k^T and weights v. Norms, activations and the
  loss are not counted."""
  MODEL = globals()["MODEL"] if model is None else model  # noqa: N806
  IMAGE = globals()["IMAGE"] if image is None else image  # noqa: N806
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


def jax_runner(batch: int, compiler_options):
  """(run_step, facts): a compiled JAX step on fixed images, and its compile
  time, parameter count and XLA's FLOP estimate."""
  model, sched = jax_unet(), schedules.make_schedule("cosine", NUM_TIMESTEPS)
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


def build_torch_step(batch: int, device: str = "cpu"):
  """(step, images, model): the PyTorch twin's train step on `device`, and a
  fixed batch [B, C, H, W] there; step(images) returns the loss tensor."""
  import torch

  import torch_unet
  torch.manual_seed(0)
  with torch.device(device):
    model = torch_unet.UNet(in_channels=IMAGE[2], image_size=IMAGE[0], **MODEL)
    sched = torch_unet.CosineSchedule(schedules.make_schedule("cosine", NUM_TIMESTEPS))
    for name, value in list(vars(sched).items()):
      if isinstance(value, torch.Tensor):
        setattr(sched, name, value.to(device))
    step = torch_unet.make_torch_step(model, sched, **OPTIM)
    images = torch.rand(batch, IMAGE[2], IMAGE[0], IMAGE[1]) * 2 - 1
  return step, images, model


def torch_runner(batch: int, threads: int):
  """(run_step, facts) for the PyTorch twin with `threads` intra-op threads."""
  import torch
  torch.set_num_threads(threads)
  step, images, model = build_torch_step(batch)
  facts = {"params": int(sum(p.numel() for p in model.parameters())),
           "threads": torch.get_num_threads(), "torch": torch.__version__}
  return lambda: float(step(images)), facts


def time_steps(run_step, steps: int) -> dict:
  """Two warm-up steps, then `steps` timed ones (run_step must block): the
  seconds of each, and per step the kernel's page faults and system CPU
  seconds of this process (memory the allocator maps afresh every step
  shows up here), and the share of the cores other processes used."""
  first_loss = run_step()
  run_step()
  before, busy = resource.getrusage(resource.RUSAGE_SELF), busy_cpu_seconds()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    run_step()
    times.append(time.perf_counter() - start)
  after = resource.getrusage(resource.RUSAGE_SELF)
  own = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
  others = None
  if busy is not None:
    others = max(0.0, busy_cpu_seconds() - busy - own) / (sum(times) * os.cpu_count())
  return {"times": times, "first_loss": first_loss,
          "page_faults_per_step": (after.ru_minflt - before.ru_minflt) // steps,
          "system_cpu_s_per_step": round((after.ru_stime - before.ru_stime) / steps, 3),
          "other_processes_cpu_share": None if others is None else round(others, 3)}


def busy_cpu_seconds() -> float | None:
  """CPU seconds all processes have run (user + system), from /proc/stat."""
  try:
    with open("/proc/stat") as f:
      fields = [int(v) for v in f.readline().split()[1:]]
  except OSError:
    return None
  user, nice, system, _, _, irq, softirq = fields[:7]
  return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def run_child(framework: str, args) -> dict:
  """One framework's timed run, in this process (`--child`)."""
  if framework == "jax":
    options = None if args.ynn_convolutions else platform.compiler_options()
    run_step, facts = jax_runner(args.batch, options)
  else:
    run_step, facts = torch_runner(args.batch, args.threads)
  return {**facts, **time_steps(run_step, args.steps)}


# ------------------------------------------------------------ allocators --

def find_tcmalloc() -> str | None:
  """The tcmalloc library the launchers would preload (launch/tcmalloc.sh
  knows where to look), or None where the machine has none."""
  script = pathlib.Path(__file__).resolve().parent.parent / "launch" / "tcmalloc.sh"
  env = {k: v for k, v in os.environ.items()
         if k not in ("LD_PRELOAD", "DIFFUSION_JAX_TCMALLOC")}
  found = subprocess.run(["bash", "-c", f'. "{script}"; preload_tcmalloc 2>/dev/null; '
                          'echo "${LD_PRELOAD:-}"'], env=env, capture_output=True, text=True)
  return found.stdout.strip() or None


def allocator_env(allocator: str) -> dict:
  """The environment for child processes that use `allocator`: "system"
  (whatever the parent has) or "tcmalloc" (preloaded)."""
  env = dict(os.environ)
  if allocator == "tcmalloc":
    path = find_tcmalloc()
    if path is None:
      raise SystemExit("train_speed: --allocators tcmalloc, but no tcmalloc library was "
                       "found (Debian/Ubuntu: apt install libtcmalloc-minimal4)")
    env["LD_PRELOAD"] = path
  return env


def spawn(framework: str, allocator: str, args) -> dict:
  """Runs `run_child` in a fresh process, so that neither framework's thread
  pools (which spin after their work) nor its heap slow the other."""
  command = [sys.executable, os.path.abspath(__file__), "--child", framework,
             "--batch", str(args.batch), "--steps", str(args.steps),
             "--threads", str(args.threads)] + (["--ynn_convolutions"]
                                                if args.ynn_convolutions else [])
  done = subprocess.run(command, env=allocator_env(allocator), capture_output=True, text=True)
  if done.returncode:
    raise SystemExit(f"train_speed: the {framework} run failed:\n{done.stderr[-2000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def compare(frameworks: list[str], allocator: str, args, flops: float) -> dict:
  """`repeats` rounds, each running every framework once in its own process,
  in turn, so that all see the same machine load."""
  runs = {name: [] for name in frameworks}
  for _ in range(args.repeats):
    for name in frameworks:
      runs[name].append(spawn(name, allocator, args))
  out = {}
  for name, results in runs.items():
    times = [t for result in results for t in result["times"]]
    first = results[0]
    out[name] = {**{k: v for k, v in first.items() if k not in (
        "times", "page_faults_per_step", "system_cpu_s_per_step",
        "other_processes_cpu_share")},
        **summarise(times, args.batch, flops),
        "round_medians_s": [round(statistics.median(r["times"]), 4) for r in results],
        "page_faults_per_step": [r["page_faults_per_step"] for r in results],
        "system_cpu_s_per_step": [r["system_cpu_s_per_step"] for r in results],
        "other_processes_cpu_share": [r["other_processes_cpu_share"] for r in results]}
  if "torch" in out:
    jax_rounds, torch_rounds = out["jax"]["round_medians_s"], out["torch"]["round_medians_s"]
    out["jax_over_torch_step_time"] = round(
        out["jax"]["step_s_median"] / out["torch"]["step_s_median"], 3)
    out["jax_over_torch_each_round"] = [round(j / t, 3)
                                        for j, t in zip(jax_rounds, torch_rounds)]
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=4, help="timed steps per process")
  parser.add_argument("--repeats", type=int, default=3,
                      help="rounds; each runs every framework once, in its own process")
  parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                      help="torch threads (JAX's CPU client uses every core)")
  parser.add_argument("--allocators", default="system",
                      help="comma-separated: system (the default malloc) and/or tcmalloc")
  parser.add_argument("--skip_torch", action="store_true")
  parser.add_argument("--ynn_convolutions", action="store_true",
                      help="keep XLA:CPU's default (YNNPACK) convolutions")
  parser.add_argument("--child", choices=["jax", "torch"], help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(run_child(args.child, args)))
    return
  flops = 3 * forward_flops_per_image() * args.batch
  frameworks = ["jax"] + ([] if args.skip_torch else ["torch"])
  out = {
      "benchmark": "train_speed",
      "config": {"image": list(IMAGE), **MODEL, "num_head_channels": 32, "batch": args.batch,
                 "loss": "hybrid (eps MSE + 0.001 T L_vlb), learned_range sigma",
                 "schedule": f"cosine T={NUM_TIMESTEPS}", "optimizer": OPTIM,
                 "dtype": "float32", "steps": args.steps, "repeats": args.repeats},
      "environment": {**environment(), "cores": len(os.sched_getaffinity(0)),
                      "xla_flags": os.environ.get("XLA_FLAGS", ""),
                      "ld_preload": os.environ.get("LD_PRELOAD", "")},
      "flops_per_step": {"analytic": flops,
                         "method": "forward conv/dense/attention matmul FLOPs counted "
                                   "from the architecture, x3 for forward + backward"},
  }
  for allocator in args.allocators.split(","):
    out[f"allocator_{allocator}"] = compare(frameworks, allocator, args, flops)
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  main()
