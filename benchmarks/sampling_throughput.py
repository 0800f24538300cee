"""Images per second of 100-step ancestral sampling with CFG: our sampler
against a PyTorch sampling loop on the same model.

The models (`--model`, those of `fair_train_speed.py`): "fixed", the
benchmark UNet of `train_speed.py` (32x32x3, 8M parameters), with 10
classes; "adm64", ADM ImageNet-64's network (296M parameters), with 1000
classes; "adm64_reduced", the same at 64 channels. Each has a learned sigma
and a null class, and random weights, the same in both frameworks (through
`convert.from_torch`). Each step runs the network once on the conditional
and unconditional halves together (batch 2B) and combines eps at guidance
scale 3, as GLIDE does. `--precision bf16`: bf16 compute (JAX's
`model.dtype`, PyTorch's autocast) with float32 weights, on both sides.

- JAX: `Bundle.sample` with method "ddpm", steps "100", guidance 3: the whole
  loop one compiled program. Its first call (compile and run) is timed
  apart from the next calls.
- PyTorch: a loop written for this benchmark, one network call per step
  (the same CFG, learned-range variance and posterior as ours), eager, and
  with `torch.compile` on the network; channels-last and cuDNN's autotuner
  on a GPU.

Each framework runs in its own process. `step_s` is a sampling step's time
(a timed call over `--steps`); `images_per_s` is for 100-step sampling, from
it (a call's cost is linear in its steps: one compiled loop body, or one
network call a step). Prints one JSON object.

    python benchmarks/sampling_throughput.py [--model fixed] [--batches 64,256] \
        [--steps 100] [--precision f32|bf16] [--frameworks jax,torch,torch_compile] \
        [--device cpu|cuda] [--jax_attention cudnn]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

SCALE = 3.0
CLASSES = {"fixed": 10, "adm64": 1000, "adm64_reduced": 1000}
TIMED_OVER = 100  # images_per_s is for sampling with this many steps


def model_of(name: str):
  """(image shape, the twin's fields, classes) of a model of fair_train_speed."""
  import fair_train_speed
  image, fields = fair_train_speed.model_of(name)
  return image, fields, CLASSES[name]


def config(name: str, precision: str = "f32", attention: str = ""):
  """Our config of the model `name`, class-conditional with a null class."""
  from diffusion_jax import config_lib
  _, fields, _ = model_of(name)
  c = config_lib.base_config()
  c.model.channels, c.model.channel_mult = fields["model_channels"], fields["channel_mult"]
  c.model.num_res_blocks = fields["num_res_blocks"]
  c.model.attention_resolutions = fields["attention_resolutions"]
  c.model.num_heads = fields.get("num_heads", 4)
  c.model.num_head_channels = fields.get("num_head_channels", -1)
  c.model.learn_sigma = True
  c.model.dtype = "bfloat16" if precision == "bf16" else "float32"
  c.model.attention_impl = attention
  c.train.label_dropout = 0.1  # a null class: CFG
  c.diffusion.schedule = "cosine"
  return c


def torch_weights(name: str, device: str):
  """The twin of `name` with random weights (output convs perturbed), and its
  state_dict."""
  import torch

  import torch_unet
  image, fields, classes = model_of(name)
  torch.manual_seed(0)
  net = torch_unet.UNet(in_channels=image[2], image_size=image[0], num_classes=classes + 1,
                        **fields)
  with torch.no_grad():
    for p in net.parameters():
      p.add_(0.02 * torch.randn_like(p))
  return net.to(device).eval(), {k: v.cpu().numpy() for k, v in net.state_dict().items()}


def run_jax(name: str, batch: int, steps: int, repeats: int, precision: str,
            attention: str) -> dict:
  import jax

  from common import gpu_turn
  from diffusion_jax.data.info import DatasetInfo
  from diffusion_jax.inference import loading
  from diffusion_jax.inference.spec import make_spec
  from diffusion_jax.models import convert
  image, _, classes = model_of(name)
  info = DatasetInfo(image[0], image[2], classes, 0)
  c = config(name, precision, attention)
  spec = make_spec(c, info)
  _, state_dict = torch_weights(name, "cpu")
  params = convert.from_torch(state_dict, jax.eval_shape(spec.init_params,
                                                         jax.random.PRNGKey(0)))
  bundle = loading.Bundle(c, jax.tree.map(jax.numpy.asarray, params), spec, info, 0, 0.0)
  labels = list(np.arange(batch) % classes)
  settings = dict(labels=labels, method="ddpm", steps=str(steps), guidance_scale=SCALE)
  start = time.perf_counter()
  bundle.sample(**settings, seed=0)
  first = time.perf_counter() - start
  with gpu_turn():
    times = timed_calls(lambda seed: bundle.sample(**settings, seed=seed), repeats)
  return {"first_call_s": round(first, 2), "sample_s": times,
          "attention": attention or "ours"}


def timed_calls(sample, repeats: int) -> list[float]:
  """Seconds of `repeats` calls of the blocking `sample(seed)`, after one
  untimed call (cuDNN's autotuner, a lazily compiled piece)."""
  sample(1)
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    sample(i + 2)
    times.append(round(time.perf_counter() - start, 4))
  return times


def run_torch(name: str, batch: int, steps: int, repeats: int, device: str, compiled: bool,
              precision: str) -> dict:
  import torch

  from common import gpu_turn
  from diffusion_jax import schedules
  torch.backends.cudnn.benchmark = True  # static shapes: let cuDNN pick its kernels
  image, _, classes = model_of(name)
  net, _ = torch_weights(name, device)
  fmt = torch.channels_last if device == "cuda" else torch.contiguous_format
  net = net.to(memory_format=fmt)
  model = torch.compile(net) if compiled else net
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")
  sched = schedules.respace(schedules.make_schedule("cosine", 1000), str(steps))
  coef = {name: torch.tensor(np.asarray(getattr(sched, name)), device=device)
          for name in ("betas", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
                       "posterior_mean_coef1", "posterior_mean_coef2",
                       "posterior_log_variance_clipped")}
  original = torch.tensor(np.asarray(sched.timesteps), device=device)
  labels = torch.arange(batch, device=device) % classes
  y = torch.cat([labels, torch.full_like(labels, classes)])

  @torch.no_grad()
  def sample(seed):
    generator = torch.Generator(device).manual_seed(seed)
    x = torch.randn(batch, image[2], image[0], image[1], device=device,
                    generator=generator).to(memory_format=fmt)
    for i in reversed(range(steps)):
      t = original[i].expand(2 * batch)
      with autocast:
        out = model(torch.cat([x, x]), t, y).float()
      eps_all, v_all = out[:, :image[2]], out[:, image[2]:]
      cond, uncond = eps_all.chunk(2)
      eps = uncond + SCALE * (cond - uncond)
      frac = (v_all[:batch] + 1) / 2  # learned range, from the conditional half
      log_var = (frac * torch.log(coef["betas"][i])
                 + (1 - frac) * coef["posterior_log_variance_clipped"][i])
      x0 = (coef["sqrt_recip_alphas_cumprod"][i] * x
            - coef["sqrt_recipm1_alphas_cumprod"][i] * eps).clamp(-1, 1)
      mean = coef["posterior_mean_coef1"][i] * x0 + coef["posterior_mean_coef2"][i] * x
      noise = torch.randn(x.shape, device=device, generator=generator) if i else 0
      x = mean + torch.exp(0.5 * log_var) * noise
    if device == "cuda":
      torch.cuda.synchronize()
    return x

  start = time.perf_counter()
  x = sample(0)
  first = time.perf_counter() - start
  with gpu_turn():
    times = timed_calls(sample, repeats)
  if not torch.isfinite(x).all():
    raise FloatingPointError("the samples are not finite")
  return {"first_call_s": round(first, 2), "sample_s": times,
          "torch": torch.__version__, "threads": torch.get_num_threads(),
          "channels_last": fmt == torch.channels_last}


def child(args) -> dict:
  if args.child == "jax":
    return run_jax(args.model, args.batch, args.steps, args.repeats, args.precision,
                   args.jax_attention)
  return run_torch(args.model, args.batch, args.steps, args.repeats, args.device,
                   args.child == "torch_compile", args.precision)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="fixed", choices=sorted(CLASSES))
  parser.add_argument("--precision", default="f32", choices=["f32", "bf16"])
  parser.add_argument("--jax_attention", default="", choices=["", "xla", "cudnn"])
  parser.add_argument("--batches", default="64,256")
  parser.add_argument("--steps", type=int, default=100, help="steps of a timed call")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--frameworks", default="jax,torch,torch_compile")
  parser.add_argument("--device", default="cpu", help="the PyTorch device: cpu or cuda")
  parser.add_argument("--out", default="")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(child(args)))
    return
  from common import emit, environment
  results = []
  for batch in (int(b) for b in args.batches.split(",")):
    row = {"batch": batch}
    for framework in args.frameworks.split(","):
      cmd = [sys.executable, os.path.abspath(__file__), f"--child={framework}",
             f"--batch={batch}", f"--steps={args.steps}", f"--repeats={args.repeats}",
             f"--device={args.device}", f"--model={args.model}",
             f"--precision={args.precision}", f"--jax_attention={args.jax_attention}"]
      done = subprocess.run(cmd, capture_output=True, text=True)
      if done.returncode:
        row[framework] = {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
        continue
      result = json.loads(done.stdout.strip().splitlines()[-1])
      result["step_s"] = round(min(result["sample_s"]) / args.steps, 5)
      result["images_per_s"] = round(batch / (TIMED_OVER * result["step_s"]), 2)
      row[framework] = result
      print(json.dumps({"batch": batch, framework: result}), file=sys.stderr, flush=True)
    torch_best = [row[f]["step_s"] for f in ("torch", "torch_compile")
                  if "step_s" in row.get(f, {})]
    if "step_s" in row.get("jax", {}) and torch_best:
      row["jax_over_best_torch_time"] = round(row["jax"]["step_s"] / min(torch_best), 3)
    results.append(row)
  report = {"benchmark": "sampling_throughput", "environment": environment(),
            "config": {"model": args.model, "classes": CLASSES[args.model],
                       "precision": args.precision, "timed_steps": args.steps,
                       "images_per_s_for_steps": TIMED_OVER, "method": "ddpm",
                       "guidance_scale": SCALE, "variance": "learned_range"},
            "results": results}
  emit(report, args.out)


if __name__ == "__main__":
  main()
