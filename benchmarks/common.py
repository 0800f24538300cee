"""What every benchmark records beside its figures: device, versions, commit."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import platform
import subprocess
import time


def environment() -> dict:
  import jax  # here, so that a job needing only `gpu_turn` starts in milliseconds
  device = jax.devices()[0]
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):  # a copy without .git (the GPU machine)
    commit = os.environ.get("BENCH_COMMIT", "unknown")
  import flax
  return {
      "backend": jax.default_backend(),
      "device": getattr(device, "device_kind", str(device)),
      "device_count": jax.device_count(),
      "jax": jax.__version__,
      "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
      "flax": flax.__version__,
      "python": platform.python_version(),
      "cpu": platform.processor() or platform.machine(),
      "commit": commit,
  }


def emit(report: dict, out: str = "") -> None:
  """Prints the report as JSON, and writes it to `out` when given."""
  import json
  import pathlib
  text = json.dumps(report, indent=2)
  print(text)
  if out:
    pathlib.Path(out).write_text(text + "\n")


def best_of(fn, repeats: int) -> float:
  """The fastest of `repeats` timed calls of fn(), in seconds (fn must block)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def resumable_results(out: str, empty: dict):
  """(results, save) of a resumable benchmark: the JSON at `out` (or `empty`
  where there is none yet), and a function that writes it back whole."""
  path = pathlib.Path(out)
  results = json.loads(path.read_text()) if path.exists() else empty

  def save():
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
  return results, save


def train_timed(config, workdir) -> dict:
  """Trains (or resumes) `config` in `workdir`: {"workdir", "wall_seconds",
  "seconds_per_step": the median logged rate after the first log, when
  there are two logs}."""
  import statistics

  from diffusion_jax.training import loop
  rates = []
  start = time.perf_counter()
  loop.train_and_evaluate(config, str(workdir),
                          on_log=lambda step, m: rates.append(m.get("steps_per_s", 0.0)))
  timing = {"workdir": str(workdir), "wall_seconds": round(time.perf_counter() - start, 1)}
  if len(rates) > 1:
    timing["seconds_per_step"] = round(1.0 / statistics.median(rates[1:]), 4)
  return timing


def markdown_table(header, rows) -> list[str]:
  """The lines of a markdown table: `header` [K] and `rows` [N][K] (any values)."""
  lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + " --- |" * len(header)]
  return lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]


def save_figure(fig, axes, path) -> str:
  """Grid lines and a legend on every panel, tight layout, saved at 100 dpi."""
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return str(path)


@contextlib.contextmanager
def gpu_turn():
  """Holds the device while timing: the file lock named by BENCH_GPU_LOCK.

  `gpu_suite.py` runs several benchmark processes side by side so that their
  compilations overlap; each times its steps only while holding this lock,
  so that no two timed sections share the device. A no-op when unset.
  """
  path = os.environ.get("BENCH_GPU_LOCK")
  if not path:
    yield
    return
  with open(path, "a") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)
