"""The tables of a `gpu_suite.py` run, in markdown, for benchmarks/README.md.

    python benchmarks/gpu_report.py benchmarks/results/gpu_suite_h200.json [RERUN.json ...]

Later files are reruns (`gpu_suite.py --only ...`): each job they ran, finished
or not, replaces the job of the same name in the files before them.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from common import markdown_table  # noqa: E402

SIDES = ("jax", "torch", "torch_compile")


def results_of(report: dict, benchmark: str):
  """(job name, row) of every finished job of `benchmark`."""
  for name, entry in report["jobs"].items():
    result = entry.get("result") or {}
    if result.get("benchmark") == benchmark:
      for row in result["results"]:
        yield name, row


def seconds(side: dict, key: str = "step_s", digits: int = 4) -> str:
  if not side:
    return "not run"
  if "error" in side:
    return "failed"
  return f"{side[key]:.{digits}f}"


def train_rows(report: dict) -> list:
  """One row per (model, precision, batch, remat, JAX attention): the sides
  of the jobs that ran it, the ratio to the best PyTorch side, and MFU."""
  groups = {}
  for _, row in results_of(report, "fair_train_speed"):
    jax_side = row.get("jax", {})
    key = (row["model"], row["precision"], row["batch"], row.get("remat", False))
    group = groups.setdefault(key, {"jax": []})
    if jax_side:
      group["jax"].append(jax_side)
    for side in ("torch", "torch_compile"):
      group[side] = row.get(side) or group.get(side)
  rows = []
  for (model, precision, batch, remat), group in groups.items():
    torch_best = [group[s]["step_s"] for s in ("torch", "torch_compile")
                  if "step_s" in (group.get(s) or {})]
    for jax_side in group["jax"] or [{}]:
      ratio = (round(jax_side["step_s"] / min(torch_best), 3)
               if "step_s" in jax_side and torch_best else "")
      memory = jax_side.get("peak_memory_bytes")
      rows.append([model, "bf16" if precision == "bf16" else "f32 (TF32)", batch,
                   "yes" if remat else "no", jax_side.get("attention", ""),
                   seconds(jax_side), seconds(group.get("torch") or {}),
                   seconds(group.get("torch_compile") or {}), ratio,
                   jax_side.get("images_per_s", ""),
                   f"{100 * jax_side['mfu']:.1f}%" if jax_side.get("mfu") else "",
                   f"{memory / 2**30:.1f}" if memory else ""])
  return rows


def sampling_rows(report: dict) -> list:
  groups = {}
  for _, row in results_of(report, "sampling_throughput"):
    group = groups.setdefault(row["batch"], {})
    group.update({s: row[s] for s in SIDES if s in row})
  rows = []
  for batch, group in sorted(groups.items()):
    times = {s: group[s]["step_s"] for s in SIDES if "step_s" in group.get(s, {})}
    torch_best = [times[s] for s in ("torch", "torch_compile") if s in times]
    ratio = round(times["jax"] / min(torch_best), 3) if "jax" in times and torch_best else ""
    rows.append([batch] + [seconds(group.get(s, {}), digits=5) for s in SIDES] + [ratio]
                + [group.get(s, {}).get("images_per_s", "") for s in SIDES]
                + [group.get(s, {}).get("first_call_s", "") for s in SIDES])
  return rows


def profile_rows(report: dict) -> list:
  rows = []
  for name, row in results_of(report, "fair_train_speed"):
    profile = row.get("jax", {}).get("profile")
    if not profile or "error" in profile:
      continue
    kinds = ", ".join(f"{kind} {ms:.1f}" for kind, ms in profile["by_kind_ms"].items())
    rows.append([name, profile["wall_ms_per_call"], profile["busy_ms_per_call"],
                 profile["kernels_per_call"], kinds])
  return rows


def merged(reports: list) -> dict:
  """The first report, with each job a later one ran put in its place (and
  no longer counted as not started)."""
  report = {**reports[0], "jobs": dict(reports[0]["jobs"]),
            "not_started": list(reports[0]["not_started"])}
  for rerun in reports[1:]:
    for name, entry in rerun["jobs"].items():
      report["jobs"][name] = entry
      if name in report["not_started"]:
        report["not_started"].remove(name)
  return report


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("suites", nargs="+", help="gpu_suite.py suite.json files, reruns last")
  args = parser.parse_args()
  missing = [path for path in args.suites if not pathlib.Path(path).is_file()]
  if missing:
    parser.error(f"no such suite.json: {', '.join(missing)}")
  report = merged([json.loads(pathlib.Path(path).read_text()) for path in args.suites])
  facts = (report["jobs"].get("facts") or {}).get("result", {})
  env = facts.get("environment", {})
  print(f"{facts.get('nvidia_smi')}; jax {env.get('jax')}, flax {env.get('flax')}, "
        f"torch {facts.get('torch')}; commit {env.get('commit')}; bf16 8192^3 matmul: "
        f"{facts.get('matmul')}\n")
  print("\n".join(markdown_table(
      ["model", "precision", "batch", "remat", "JAX attention", "JAX step s", "eager s",
       "torch.compile s", "JAX / best PyTorch", "JAX images/s", "JAX MFU", "JAX peak GiB"],
      train_rows(report))) + "\n")
  print("\n".join(markdown_table(
      ["batch", "JAX step s", "eager step s", "torch.compile step s", "JAX / best PyTorch",
       "JAX images/s", "eager images/s", "compiled images/s", "JAX first call s",
       "eager first call s", "compiled first call s"], sampling_rows(report))) + "\n")
  print("\n".join(markdown_table(
      ["job", "wall ms a step", "device busy ms", "kernels a step", "kernel ms by kind"],
      profile_rows(report))))
  missing = [n for n, e in report["jobs"].items() if e["outcome"] != "done"]
  print("\nnot finished:", ", ".join(f"{n} ({report['jobs'][n]['outcome']})" for n in missing)
        or "none", "; not started:", ", ".join(report["not_started"]) or "none")


if __name__ == "__main__":
  main()
