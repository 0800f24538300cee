"""A scaling model for pods: FLOPs, state bytes, communication, step time and MFU.

For the ADM ImageNet-64 config and GLIDE's base model, it reports:
- FLOPs per image, from XLA's cost analysis of the lowered forward pass
  (it counts no multiply-adds with a convolution's zero padding: 4% fewer
  than the nominal count at 64x64, 16% at 8x8, so the MFU it gives is a
  little conservative); a train step is counted as 3 forward passes
  (forward, and a backward pass of twice its FLOPs);
- the bytes of the parameters, AdamW's two moments and the EMA (all float32);
- the collectives of one train step for data parallelism and FSDP over N
  devices, each device's traffic by ring algorithms:
  - data parallel: an all-reduce of the gradients, 2 (N - 1) / N x 4P bytes;
  - FSDP over f devices: each sharded weight all-gathered twice (forward,
    and again in the backward pass; the compiled CPU step shows both), and
    its gradient reduce-scattered: 3 (f - 1) / f x 4P bytes;
  - data x fsdp: FSDP within a group of f, then an all-reduce of each
    device's gradient shard (4P / f) over the d groups;
- the predicted step time on TPU v5p and H100 pods of 8 to 256 chips, from
  the published peak FLOP/s and interconnect bandwidth (`DEVICES`), and the
  MFU it gives. Compute runs at `--efficiency` of peak (the one-device
  utilisation; ADM reported 41% on V100s). Communication that overlaps
  compute is hidden up to the compute time: the step takes
  max(compute, communication), or their sum with `--no_overlap`.

Checks, in the same run:
- the communication counts against the collectives of the compiled
  8-device CPU train step (data x fsdp = 8x1, 2x4, 1x8) of the main-job
  config: each collective's operand bytes, by kind;
- the compute model against a one-device measurement: the main-job train
  step timed on this machine, against its FLOPs over the measured matmul
  throughput.

Writes docs/scaling.md and the JSON (`--out`).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/scaling_model.py
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import best_of, environment, markdown_table  # noqa: E402
from diffusion_jax import parallel  # noqa: E402
from diffusion_jax.data.info import DatasetInfo  # noqa: E402
from diffusion_jax.inference.spec import make_spec  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s8": 1, "u8": 1, "pred": 1,
         "s64": 8, "u64": 8, "f64": 8}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

# Published figures (vendor data sheets): dense bfloat16 peak FLOP/s per
# chip, and the bandwidth a ring collective gets per chip, one direction.
DEVICES = {
    "TPU v5p": dict(peak_bf16=459e12, hbm_gib=95,
                    # ICI: 4,800 Gbit/s per chip over its 3-D torus links; a ring
                    # along one axis gets 2 of the 6 links: 1,600 Gbit/s.
                    link_bytes_s=lambda n: 200e9),
    "H100 SXM": dict(peak_bf16=989e12, hbm_gib=80,
                     # NVLink 4 within a node of 8 (450 GB/s each way); across
                     # nodes one 400 Gbit/s InfiniBand NIC per GPU (50 GB/s).
                     link_bytes_s=lambda n: 450e9 if n <= 8 else 50e9),
}
CHIPS = (8, 16, 32, 64, 128, 256)


# ------------------------------------------------------------ the models --

def adm64_config():
  sys.path.insert(0, str(ROOT))
  from configs import imagenet64_adm
  return imagenet64_adm.get_config(), DatasetInfo(64, 3, 1000, 0)


def glide_base_config():
  from diffusion_jax.openai import released
  config, info = released.config_of("base", released.flags_of("base"))
  config.data.batch_size = 2048  # GLIDE's base model's batch
  return config, info


def main_job_config():
  from configs import shapes_class_cond
  return shapes_class_cond.get_config(), DatasetInfo(16, 3, 18, 0)


MODELS = {"ADM ImageNet-64": adm64_config, "GLIDE base": glide_base_config}


def forward_flops(spec) -> float:
  """XLA's FLOP count of one image's forward pass (lowered, not compiled)."""
  size, _, channels = spec.image_shape
  params = jax.eval_shape(spec.init_params, jax.random.PRNGKey(0))
  cond = {}
  for c in spec.conditioning:
    cond.update(c.placeholder(1))
  x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)

  def apply(p, x, t, cond):
    return spec.apply(p, x, t, **spec.encode_cond(p, cond))
  cost = jax.jit(apply).lower(params, x, t, cond).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def describe_model(name, make) -> dict:
  config, info = make()
  spec = make_spec(config, info)
  params = jax.eval_shape(spec.init_params, jax.random.PRNGKey(0))
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  emas = len(config.train.ema_rates)
  flops = forward_flops(spec)
  return {"model": name, "params": count, "batch": int(config.data.batch_size),
          "forward_flops_per_image": flops, "train_flops_per_image": 3 * flops,
          "bytes": {"params": 4 * count, "adam": 8 * count, "ema": 4 * count * emas,
                    "total": 4 * count * (3 + emas)}}


def traffic_per_device(param_bytes: float, data: int, fsdp: int) -> dict:
  """Each device's bytes sent per train step, by collective (ring algorithms)."""
  shard = param_bytes / fsdp
  out = {"all-gather": 2 * (fsdp - 1) / fsdp * param_bytes if fsdp > 1 else 0.0,
         "reduce-scatter": (fsdp - 1) / fsdp * param_bytes if fsdp > 1 else 0.0,
         "all-reduce": 2 * (data - 1) / data * shard if data > 1 else 0.0}
  out["total"] = sum(out.values())
  return out


def predict(model: dict, device: str, chips: int, fsdp: int, efficiency: float,
            overlap: bool) -> dict:
  spec = DEVICES[device]
  data = chips // fsdp
  flops_step = model["train_flops_per_image"] * model["batch"]
  compute_s = flops_step / chips / (spec["peak_bf16"] * efficiency)
  comm = traffic_per_device(model["bytes"]["params"], data, fsdp)
  comm_s = comm["total"] / spec["link_bytes_s"](chips)
  step_s = max(compute_s, comm_s) if overlap else compute_s + comm_s
  state_gib = model["bytes"]["total"] / fsdp / 2**30
  return {"device": device, "chips": chips, "data": data, "fsdp": fsdp,
          "compute_s": compute_s, "comm_s": comm_s, "step_s": step_s,
          "mfu": flops_step / step_s / chips / spec["peak_bf16"],
          "images_per_s": model["batch"] / step_s, "state_gib_per_chip": state_gib,
          "fits": state_gib < spec["hbm_gib"]}


# --------------------------------------------------- the compiled check --

def hlo_collectives(text: str) -> dict[str, dict]:
  """Count and operand bytes of each kind of collective in compiled HLO text
  (a tuple-shaped collective counts each of its operands)."""
  found = collections.defaultdict(lambda: {"count": 0, "bytes": 0})
  pattern = re.compile(r"= (.*?) (" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
  for line in text.splitlines():
    match = pattern.search(line)
    if not match:
      continue
    kind = found[match.group(2)]
    kind["count"] += 1
    for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", match.group(1)):
      if dtype in BYTES:
        kind["bytes"] += BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
  return dict(found)


def compiled_step_text(config, info, data: int, fsdp: int) -> tuple[str, dict]:
  """The compiled HLO of the real sharded train step on a data x fsdp mesh of
  the (simulated) devices, from abstract values: nothing is allocated."""
  from diffusion_jax.training import tasks
  task = tasks.make_task(config, info)
  mesh = parallel.make_mesh(data, fsdp)
  abstract, shardings = task.abstract_state(mesh, 0)
  size = info.image_size
  batch_shape = (data * fsdp,)
  batch = {"image": jax.ShapeDtypeStruct(batch_shape + (size, size, info.channels), jnp.float32,
                                         sharding=parallel.batch_sharding(mesh))}
  for c in task.spec.conditioning:
    for key, value in c.placeholder(data * fsdp).items():
      batch[key] = jax.ShapeDtypeStruct(value.shape, value.dtype,
                                        sharding=parallel.batch_sharding(mesh))
  text = tasks.compile_step(task, mesh, shardings).lower(abstract, batch).compile().as_text()
  leaves = jax.tree.leaves(abstract.params)
  sharded = sum(4 * int(np.prod(p.shape)) for p in leaves
                if parallel.param_spec(p.shape, fsdp) != jax.sharding.PartitionSpec())
  total = sum(4 * int(np.prod(p.shape)) for p in leaves)
  return text, {"param_bytes": total, "sharded_param_bytes": sharded}


def hlo_check(meshes=((8, 1), (2, 4), (1, 8))) -> list[dict]:
  config, info = main_job_config()
  rows = []
  for data, fsdp in meshes:
    text, sizes = compiled_step_text(config, info, data, fsdp)
    rows.append({"mesh": f"{data}x{fsdp}", **sizes, "collectives": hlo_collectives(text)})
  return rows


# ------------------------------------------------ the one-device check --

def matmul_flops_per_s() -> float:
  """This device's measured float32 matmul throughput (4096 x 4096)."""
  a = jnp.ones((4096, 4096), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  matmul(a).block_until_ready()
  return 2 * 4096 ** 3 / best_of(lambda: matmul(a).block_until_ready(), 5)


def one_device_check(steps: int = 3) -> dict:
  from diffusion_jax.training import tasks
  config, info = main_job_config()
  task = tasks.make_task(config, info)
  mesh = parallel.make_mesh(1, 1)
  state, shardings = task.create_state(mesh, 0)
  step = tasks.compile_step(task, mesh, shardings)
  batch_size = int(config.data.batch_size)
  batch = {"image": jnp.zeros((batch_size, 16, 16, 3), jnp.float32),
           "y": jnp.zeros((batch_size,), jnp.int32)}
  state, _ = step(state, batch)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  measured = (time.perf_counter() - start) / steps
  model = describe_model("main job", main_job_config)
  peak = matmul_flops_per_s()
  flops_step = model["train_flops_per_image"] * batch_size
  return {"config": "configs/shapes_class_cond.py (the main job), batch 64, one device",
          "train_flops_per_step": flops_step, "matmul_flops_per_s": peak,
          "predicted_s_at_matmul_peak": flops_step / peak, "measured_s": measured,
          "efficiency": flops_step / peak / measured}


def predicted_payload(param_bytes: float, sharded_bytes: float, data: int,
                      fsdp: int) -> dict:
  """The operand bytes the model expects in the compiled step, by role:
  weight gathers (2 per sharded weight) and the gradient reduction
  (reduce-scatter over fsdp, then an all-reduce of the shards over data)."""
  if fsdp == 1:
    return {"weight all-gathers": 0.0, "gradient reduction": param_bytes}
  return {"weight all-gathers": 2 * sharded_bytes,
          "gradient reduction": param_bytes * (1 + (1 / fsdp if data > 1 else 0))}


def measured_payload(collectives: dict) -> dict:
  """The same roles in compiled HLO: XLA:CPU reduces gradients with all-reduce
  and all-to-all where a GPU or TPU would reduce-scatter."""
  get = lambda kind: collectives.get(kind, {}).get("bytes", 0)  # noqa: E731
  return {"weight all-gathers": float(get("all-gather")),
          "gradient reduction": float(get("all-reduce") + get("all-to-all")
                                      + get("reduce-scatter"))}


def reading(models, predictions, efficiency) -> list[str]:
  """Where each pod stops being compute-bound, in sentences."""
  out = []
  for model in models:
    for device in DEVICES:
      for fsdp, what in ((1, "data parallel"), (8, "FSDP over 8")):
        rows = [p for p in predictions if (p["model"], p["device"], p["fsdp"]) ==
                (model["model"], device, fsdp)]
        bound = [p["chips"] for p in rows if p["mfu"] >= 0.95 * efficiency]
        last = rows[-1]
        reach = (f"stays compute-bound up to {max(bound)} chips" if bound else
                 "is communication-bound from 8 chips")
        out.append(f"- {model['model']} on {device}, {what}: {reach}; at {last['chips']} "
                   f"chips the step is {last['step_s'] * 1e3:.0f} ms "
                   f"({last['compute_s'] * 1e3:.0f} ms compute, {last['comm_s'] * 1e3:.0f} ms "
                   f"communication), MFU {last['mfu']:.0%}.")
  biggest = max(m["bytes"]["total"] for m in models) / 2**30
  out += ["", f"The state of either model ({biggest:.1f} GiB at most) fits on one chip, so "
          "FSDP buys memory these models do not need, for 1.5 times the traffic of data "
          "parallelism (two gathers and a reduce-scatter against one all-reduce). It "
          "matters for larger models, or to free memory for larger per-chip batches. "
          "Across H100 nodes, the all-reduce over InfiniBand limits data parallelism; "
          "TPU v5p's interconnect keeps it compute-bound through 256 chips at this batch."]
  return out


_OVERLAP = {True: "overlapped with compute (the step is the longer of the two)",
            False: "after compute (their sum)"}


def _mb(value: float) -> str:
  return f"{value / 1e6:.2f}"


def report(models, predictions, checks, one_device, args) -> str:
  lines = ["# Scaling model", "",
           "Made by `benchmarks/scaling_model.py`; edit the script, not this page. "
           "Figures on one line of a table come from one run "
           f"(commit {environment()['commit']}, {environment()['device']}, "
           f"{args.elapsed_s:.0f} s in all).", "",
           "## The models", ""]
  lines += markdown_table(
      ["model", "parameters", "batch", "forward GFLOP / image", "train GFLOP / image",
       "params GiB", "AdamW GiB", "EMA GiB", "state GiB"],
      [[m["model"], f"{m['params']:,}", m["batch"], f"{m['forward_flops_per_image'] / 1e9:.1f}",
        f"{m['train_flops_per_image'] / 1e9:.1f}"] +
       [f"{m['bytes'][k] / 2**30:.2f}" for k in ("params", "adam", "ema", "total")]
       for m in models])
  lines += ["", "FLOPs are XLA's cost analysis of the lowered forward pass (2 per "
            "multiply-add, elementwise ops included, the multiply-adds with a "
            "convolution's zero padding not: the nominal count is 5-10% higher); a "
            "train step is 3 forward passes. "
            "All state is float32 (bfloat16 compute keeps float32 master weights).", "",
            "## Predicted step time and MFU", "",
            f"Compute at {args.efficiency:.0%} of the bfloat16 peak, communication "
            f"{_OVERLAP[not args.no_overlap]}. "
            "Per-chip state is params + AdamW + EMA divided by the FSDP size "
            "(activations not counted). Peak and bandwidth: see `DEVICES` in the script.",
            ""]
  for model in models:
    rows = [p for p in predictions if p["model"] == model["model"]]
    lines += [f"### {model['model']} (global batch {model['batch']})", ""]
    lines += markdown_table(
        ["device", "chips", "data x fsdp", "compute ms", "comm ms", "step ms", "MFU",
         "images/s", "state GiB/chip"],
        [[p["device"], p["chips"], f"{p['data']}x{p['fsdp']}", f"{p['compute_s'] * 1e3:.0f}",
          f"{p['comm_s'] * 1e3:.1f}", f"{p['step_s'] * 1e3:.0f}", f"{p['mfu']:.0%}",
          f"{p['images_per_s']:,.0f}", f"{p['state_gib_per_chip']:.1f}"] for p in rows])
    lines.append("")
  lines += ["## Reading", ""] + reading(models, predictions, args.efficiency) + [""]
  lines += ["## Check: the collectives of the compiled 8-device step", "",
            "The main-job config's real train step, compiled for 8 simulated CPU devices "
            "(nothing run). Operand bytes in MB: the model's expectation against the HLO.",
            ""]
  rows = []
  for check in checks:
    data, fsdp = (int(v) for v in check["mesh"].split("x"))
    want = predicted_payload(check["param_bytes"], check["sharded_param_bytes"], data, fsdp)
    got = measured_payload(check["collectives"])
    for role in want:
      rows.append([check["mesh"], role, _mb(want[role]), _mb(got[role]),
                   f"{got[role] / want[role]:.3f}" if want[role] else "-"])
  lines += markdown_table(["mesh", "role", "model MB", "compiled MB", "ratio"], rows)
  lines += ["", "By kind, as compiled:", ""]
  lines += markdown_table(["mesh", "kind", "count", "MB"],
                          [[c["mesh"], k, v["count"], _mb(v["bytes"])]
                           for c in checks for k, v in sorted(c["collectives"].items())])
  if one_device:
    lines += ["", "## Check: one device", "", one_device["config"] + ":", ""]
    lines += markdown_table(
        ["train GFLOP / step", "matmul GFLOP/s", "predicted at matmul peak (s)", "measured (s)",
         "efficiency"],
        [[f"{one_device['train_flops_per_step'] / 1e9:.0f}",
          f"{one_device['matmul_flops_per_s'] / 1e9:.0f}",
          f"{one_device['predicted_s_at_matmul_peak']:.2f}", f"{one_device['measured_s']:.2f}",
          f"{one_device['efficiency']:.0%}"]])
    lines += ["", "The device's own matmul throughput stands for its peak here. The "
              "efficiency is what the pod tables take as `--efficiency` for a device "
              "measured alone. This step runs as one of 8 simulated devices and without "
              "tcmalloc; the main job's launcher (tcmalloc, one device) trains at "
              "0.34-0.37 s a step on this machine (README), "
              f"{one_device['train_flops_per_step'] / one_device['matmul_flops_per_s'] / 0.37:.0%}"
              f"-{one_device['train_flops_per_step'] / one_device['matmul_flops_per_s'] / 0.34:.0%}"
              " by the same measure."]
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--efficiency", type=float, default=0.4)
  parser.add_argument("--no_overlap", action="store_true")
  parser.add_argument("--skip_one_device", action="store_true")
  parser.add_argument("--doc", default=str(ROOT / "docs" / "scaling.md"))
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scaling_cpu.json"))
  args = parser.parse_args()
  start = time.perf_counter()
  models = [describe_model(name, make) for name, make in MODELS.items()]
  predictions = []
  for model in models:
    for device in DEVICES:
      for chips in CHIPS:
        for fsdp in (1, 8):
          predictions.append({"model": model["model"], **predict(
              model, device, chips, fsdp, args.efficiency, not args.no_overlap)})
  checks = hlo_check()
  one_device = None if args.skip_one_device else one_device_check()
  result = {"benchmark": "scaling_model", "environment": environment(),
            "efficiency": args.efficiency, "overlap": not args.no_overlap, "models": models,
            "predictions": predictions, "hlo_check": checks, "one_device": one_device}
  args.elapsed_s = time.perf_counter() - start
  pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  pathlib.Path(args.doc).write_text(report(models, predictions, checks, one_device, args))
  print(json.dumps({k: result[k] for k in ("environment", "models", "one_device")}, indent=2))


if __name__ == "__main__":
  main()
