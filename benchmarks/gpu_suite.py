"""Every GPU measurement of the speed issue, in one run of at most 8 minutes.

A fixed list of jobs (`JOBS`, most important first), each a benchmark
process of its own. Up to `--slots` run side by side, so that their
compilations (minutes, on the host's cores) overlap; each holds the device
alone while it times (`common.gpu_turn`, a file lock), so no two timed
sections share it. A job's weight is the slots it takes: a large batch runs
beside fewer others, and the released-models job, which times without the
lock, runs alone. At `--deadline` seconds the jobs still running are
stopped and the ones not started are listed as such: what finished is
kept. Output, in `--out` (at most 3 files, as the lent machine returns few):
  - suite.json: the device's facts (its name, the versions, the bf16 matmul
    rate measured through JAX and PyTorch) and each job's JSON or error;
  - logs.tar.gz: each job's log.

Run on the GPU machine from the repository root:

    python benchmarks/gpu_suite.py --out "$OUT"

`--dry_run` runs the same jobs at CPU sizes (small batches, the reduced
ADM), to check the suite end to end before spending device time.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclasses.dataclass
class Job:
  name: str
  argv: list  # the script (in benchmarks/) and its flags, without --out
  weight: int = 1
  timeout_s: float = 300.0


def train(name, model, precision, batch, sides, attention="", extra=(), weight=1):
  flags = [f"--models={model}", f"--precision={precision}", f"--batch={batch}",
           f"--sides={sides}", "--steps=5", "--repeats=3", "--tf32=on"]
  flags += [f"--jax_attention={attention}"] if attention else []
  return Job(name, ["fair_train_speed.py", *flags, *extra], weight)


def sample(name, batch, framework, steps, repeats, attention=""):
  flags = ["--model=adm64", "--precision=bf16", f"--batches={batch}", f"--steps={steps}",
           f"--repeats={repeats}", f"--frameworks={framework}", "--device=cuda"]
  flags += [f"--jax_attention={attention}"] if attention else []
  return Job(name, ["sampling_throughput.py", *flags])


JOBS = [
    Job("facts", ["gpu_suite.py", "--facts"], timeout_s=120),
    # The train step, ADM-64 in bf16 at batch 64: JAX (cuDNN's attention, then
    # ours; each profiled) against the twin compiled and eager.
    train("train_adm64_bf16_jax_cudnn", "adm64", "bf16", 64, "jax", "cudnn", ["--profile=3"]),
    train("train_adm64_bf16_torch_compile", "adm64", "bf16", 64, "torch_compile"),
    train("train_adm64_bf16_torch", "adm64", "bf16", 64, "torch"),
    train("train_adm64_bf16_jax_ours", "adm64", "bf16", 64, "jax", "", ["--profile=3"]),
    # A sampling step, 100-step DDPM with CFG, at batch 64 and 256.
    sample("sample_b64_jax", 64, "jax", 20, 2, "cudnn"),
    sample("sample_b64_torch", 64, "torch", 20, 2),
    sample("sample_b64_torch_compile", 64, "torch_compile", 20, 2),
    sample("sample_b256_jax", 256, "jax", 10, 1, "cudnn"),
    sample("sample_b256_torch", 256, "torch", 10, 1),
    sample("sample_b256_torch_compile", 256, "torch_compile", 10, 1),
    # Larger batches, with and without rematerialization.
    train("train_adm64_bf16_b256_jax", "adm64", "bf16", 256, "jax", "cudnn", weight=2),
    train("train_adm64_bf16_b256_jax_remat", "adm64", "bf16", 256, "jax", "cudnn",
          ["--remat"], weight=2),
    # GLIDE's base model (JAX only) and float32 with TF32 on both sides.
    train("train_glide_bf16_jax", "glide_base", "bf16", 32, "jax"),
    train("train_adm64_tf32_jax", "adm64", "f32", 32, "jax"),
    train("train_adm64_tf32_torch", "adm64", "f32", 32, "torch"),
    Job("openai_models", ["openai_models.py", "--kinds=64x64_diffusion,base,upsample"],
        weight=3, timeout_s=120),
]


# A dry run's replacements: whole flags, then flags by name (any value).
DRY_FLAGS = {"--models=adm64": "--models=adm64_reduced", "--model=adm64": "--model=adm64_reduced",
             "--models=glide_base": "--models=fixed", "--device=cuda": "--device=cpu",
             "--jax_attention=cudnn": "--jax_attention=xla"}
DRY_VALUES = {"--batch": "2", "--batches": "2", "--steps": "2", "--repeats": "1",
              "--kinds": "64x64_diffusion"}


def dry_flag(flag: str) -> str:
  flag = DRY_FLAGS.get(flag, flag)
  name = flag.split("=")[0]
  return f"{name}={DRY_VALUES[name]}" if name in DRY_VALUES else flag


def dry_run(job: Job) -> Job:
  """The job at CPU sizes: the reduced ADM, batch 2, two steps a round."""
  argv = [dry_flag(a) for a in job.argv]
  return dataclasses.replace(job, argv=argv)


# ------------------------------------------------------------ the facts --

def matmul_rates(size: int = 8192, calls: int = 10) -> dict:
  """bf16 [size, size] @ [size, size] FLOP/s through JAX and PyTorch, on
  random data (the device's practical matrix ceiling)."""
  import jax
  import jax.numpy as jnp

  from common import best_of
  flops = 2 * size ** 3 * calls
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.bfloat16)
  product = jax.jit(lambda a: jax.lax.fori_loop(0, calls, lambda _, x: (x @ a) * 0.01, a))
  product(a).block_until_ready()
  rates = {"jax_bf16_flops": flops / best_of(lambda: product(a).block_until_ready(), 3)}
  try:
    import torch
    if torch.cuda.is_available():
      b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)

      def torch_products():
        x = b
        for _ in range(calls):
          x = (x @ b) * 0.01
        torch.cuda.synchronize()
      torch_products()
      rates["torch_bf16_flops"] = flops / best_of(torch_products, 3)
  except ImportError:
    pass
  return {k: round(v / 1e12, 1) for k, v in rates.items()} | {"unit": "TFLOP/s",
                                                              "size": size}


def facts() -> dict:
  from common import environment, gpu_turn
  try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                          "clocks.max.sm", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
  except FileNotFoundError:
    smi = None
  with gpu_turn():
    rates = matmul_rates(512 if environment()["backend"] == "cpu" else 8192)
  try:
    import torch
    torch_version = torch.__version__
  except ImportError:
    torch_version = None
  return {"environment": environment(), "nvidia_smi": smi,
          "torch": torch_version, "matmul": rates, "cpu_count": os.cpu_count()}


# ------------------------------------------------------------- the pool --

class Suite:
  """Runs the jobs in order, `slots` weight at a time, until the deadline."""

  def __init__(self, jobs, out: pathlib.Path, slots: int, deadline_s: float):
    self.pending, self.running, self.results = list(jobs), {}, {}
    self.out, self.slots, self.deadline = out, slots, time.monotonic() + deadline_s
    self.logs = pathlib.Path(tempfile.mkdtemp(prefix="gpu_suite_"))
    self.env = dict(os.environ, BENCH_GPU_LOCK=str(self.logs / "gpu.lock"),
                    XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONUNBUFFERED="1",
                    PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    self.start = time.monotonic()

  def free(self) -> int:
    return self.slots - sum(job.weight for job, _, _ in self.running.values())

  def launch(self, job: Job) -> None:
    result = self.logs / f"{job.name}.json"
    argv = [sys.executable, str(HERE / job.argv[0]), *job.argv[1:], f"--out={result}"]
    with open(self.logs / f"{job.name}.log", "w") as log:  # the child keeps its copy
      log.write(" ".join(argv) + "\n")
      log.flush()
      process = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=log,
                                 start_new_session=True)  # its children die with it
    self.running[job.name] = (job, process, time.monotonic())
    print(f"[{self.elapsed():5.0f} s] start {job.name}", flush=True)

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def finish(self, name: str, outcome: str) -> None:
    job, process, started = self.running.pop(name)
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
    path = self.logs / f"{name}.json"
    entry = {"argv": job.argv, "seconds": round(time.monotonic() - started, 1),
             "started_at_s": round(started - self.start, 1), "outcome": outcome}
    if outcome == "done" and process.returncode == 0 and path.exists():
      entry["result"] = json.loads(path.read_text())
    else:
      entry["outcome"] = outcome if outcome != "done" else f"exit {process.returncode}"
      tail = (self.logs / f"{name}.log").read_text().strip().splitlines()[-12:]
      entry["log_tail"] = tail
    self.results[name] = entry
    print(f"[{self.elapsed():5.0f} s] {entry['outcome']:>9} {name} "
          f"({entry['seconds']} s)", flush=True)
    self.save()

  def save(self) -> None:
    report = {"benchmark": "gpu_suite", "elapsed_s": round(self.elapsed(), 1),
              "jobs": self.results,
              "not_started": [job.name for job in self.pending]}
    (self.out / "suite.json").write_text(json.dumps(report, indent=1) + "\n")

  def run(self) -> None:
    while self.pending or self.running:
      now = time.monotonic()
      for name, (job, process, started) in list(self.running.items()):
        if process.poll() is not None:
          self.finish(name, "done")
        elif now > self.deadline:
          self.finish(name, "stopped at the deadline")
        elif now - started > job.timeout_s:
          self.finish(name, f"over its {job.timeout_s:.0f} s")
      if now > self.deadline:
        break
      while self.pending and self.pending[0].weight <= self.free():
        self.launch(self.pending.pop(0))
      time.sleep(0.5)
    self.save()
    with tarfile.open(self.out / "logs.tar.gz", "w:gz") as tar:
      for log in sorted(self.logs.glob("*.log")):
        tar.add(log, arcname=log.name)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="runs/gpu")
  parser.add_argument("--slots", type=int, default=3)
  parser.add_argument("--deadline", type=float, default=440.0, help="seconds")
  parser.add_argument("--only", default="", help="comma-separated job names")
  parser.add_argument("--dry_run", action="store_true", help="CPU sizes")
  parser.add_argument("--facts", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  sys.path.insert(0, str(HERE))
  sys.path.insert(0, str(ROOT))
  if args.facts:
    from common import emit
    emit(facts(), args.out)
    return
  jobs = [job for job in JOBS if not args.only or job.name in args.only.split(",")]
  if args.dry_run:  # the released models' job has no CPU size
    jobs = [dry_run(job) for job in jobs if job.name != "openai_models"]
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  Suite(jobs, out, args.slots, args.deadline).run()
  report = json.loads((out / "suite.json").read_text())
  for name, entry in report["jobs"].items():
    print(f"{name:34s} {entry['outcome']:>10s} {entry['seconds']:7.1f} s")
  print("not started:", ", ".join(report["not_started"]) or "none")


if __name__ == "__main__":
  main()
