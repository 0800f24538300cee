"""Images per second of 100-step ancestral sampling with CFG: our sampler
against a PyTorch sampling loop on the same model.

The model: the benchmark UNet of `train_speed.py` (32x32x3, 8M parameters,
learned sigma), class-conditional with 10 classes and a null class, random
weights (the same in both frameworks, through `convert.from_torch`). Each
step runs the network once on the conditional and unconditional halves
together (batch 2B) and combines eps at guidance scale 3, as GLIDE does.

- JAX: `Bundle.sample` with method "ddpm", steps "100", guidance 3: the whole
  loop one compiled program. Its first call (compile and run) is timed
  apart from the next calls.
- PyTorch: a loop written for this benchmark, one network call per step
  (the same CFG, learned-range variance and posterior as ours), eager, and
  with `torch.compile` on the network (`--torch_compile`).

Each framework runs in its own process. Prints one JSON object.

    python benchmarks/sampling_throughput.py [--batches 64,256] [--steps 100] \
        [--frameworks jax,torch,torch_compile] [--device cpu|cuda]
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

NUM_CLASSES = 10
SCALE = 3.0


def config():
  from diffusion_jax import config_lib
  from train_speed import MODEL
  c = config_lib.base_config()
  c.model.channels, c.model.channel_mult = MODEL["model_channels"], MODEL["channel_mult"]
  c.model.num_res_blocks = MODEL["num_res_blocks"]
  c.model.attention_resolutions = MODEL["attention_resolutions"]
  c.model.num_heads, c.model.learn_sigma = MODEL["num_heads"], True
  c.train.label_dropout = 0.1  # a null class: CFG
  c.diffusion.schedule = "cosine"
  return c


def torch_weights(device: str):
  """The twin with random weights (output convs perturbed), and its state_dict."""
  import torch

  import torch_unet
  from train_speed import IMAGE, MODEL
  torch.manual_seed(0)
  net = torch_unet.UNet(in_channels=3, image_size=IMAGE[0], num_classes=NUM_CLASSES + 1,
                        **MODEL)
  with torch.no_grad():
    for p in net.parameters():
      p.add_(0.02 * torch.randn_like(p))
  return net.to(device).eval(), {k: v.cpu().numpy() for k, v in net.state_dict().items()}


def run_jax(batch: int, steps: int, repeats: int) -> dict:
  import jax

  from diffusion_jax.data.pipeline import DatasetInfo
  from diffusion_jax.inference import loading
  from diffusion_jax.inference.spec import make_spec
  from diffusion_jax.models import convert
  c = config()
  spec = make_spec(c, DatasetInfo(32, 3, NUM_CLASSES, 0))
  _, state_dict = torch_weights("cpu")
  params = convert.from_torch(state_dict, jax.eval_shape(spec.init_params,
                                                         jax.random.PRNGKey(0)))
  bundle = loading.Bundle(c, jax.tree.map(jax.numpy.asarray, params), spec,
                          DatasetInfo(32, 3, NUM_CLASSES, 0), 0, 0.0)
  labels = list(np.arange(batch) % NUM_CLASSES)
  settings = dict(labels=labels, method="ddpm", steps=str(steps), guidance_scale=SCALE)
  start = time.perf_counter()
  bundle.sample(**settings, seed=0)
  first = time.perf_counter() - start
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    bundle.sample(**settings, seed=i + 1)
    times.append(time.perf_counter() - start)
  return {"first_call_s": round(first, 2), "sample_s": [round(t, 3) for t in times]}


def run_torch(batch: int, steps: int, repeats: int, device: str, compiled: bool) -> dict:
  import torch

  from diffusion_jax import schedules
  net, _ = torch_weights(device)
  model = torch.compile(net) if compiled else net
  sched = schedules.respace(schedules.make_schedule("cosine", 1000), str(steps))
  coef = {name: torch.tensor(np.asarray(getattr(sched, name)), device=device)
          for name in ("betas", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
                       "posterior_mean_coef1", "posterior_mean_coef2",
                       "posterior_log_variance_clipped")}
  original = torch.tensor(np.asarray(sched.timesteps), device=device)
  labels = torch.arange(batch, device=device) % NUM_CLASSES
  y = torch.cat([labels, torch.full_like(labels, NUM_CLASSES)])

  @torch.no_grad()
  def sample(seed):
    generator = torch.Generator(device).manual_seed(seed)
    x = torch.randn(batch, 3, 32, 32, device=device, generator=generator)
    for i in reversed(range(steps)):
      t = original[i].expand(2 * batch)
      out = model(torch.cat([x, x]), t, y)
      eps_all, v_all = out[:, :3], out[:, 3:]
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
  sample(0)
  first = time.perf_counter() - start
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    sample(i + 1)
    times.append(time.perf_counter() - start)
  return {"first_call_s": round(first, 2), "sample_s": [round(t, 3) for t in times],
          "torch": torch.__version__, "threads": torch.get_num_threads()}


def child(args) -> dict:
  if args.child == "jax":
    return run_jax(args.batch, args.steps, args.repeats)
  return run_torch(args.batch, args.steps, args.repeats, args.device,
                   args.child == "torch_compile")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", default="64,256")
  parser.add_argument("--steps", type=int, default=100)
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
             f"--device={args.device}"]
      done = subprocess.run(cmd, capture_output=True, text=True)
      if done.returncode:
        row[framework] = {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
        continue
      result = json.loads(done.stdout.strip().splitlines()[-1])
      result["images_per_s"] = round(batch / min(result["sample_s"]), 2)
      row[framework] = result
      print(json.dumps({"batch": batch, framework: result}), file=sys.stderr, flush=True)
    torch_best = [row[f]["images_per_s"] for f in ("torch", "torch_compile")
                  if "images_per_s" in row.get(f, {})]
    if "images_per_s" in row.get("jax", {}) and torch_best:
      row["jax_over_best_torch_time"] = round(max(torch_best) / row["jax"]["images_per_s"], 3)
    results.append(row)
  report = {"benchmark": "sampling_throughput", "environment": environment(),
            "config": {"model": "train_speed.MODEL, 32x32, 10 classes + null",
                       "steps": args.steps, "method": "ddpm", "guidance_scale": SCALE,
                       "variance": "learned_range"}, "results": results}
  emit(report, args.out)


if __name__ == "__main__":
  main()
