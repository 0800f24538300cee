"""What dominates a compiled step on the device: a `jax.profiler` trace of a
few calls, summed per kernel and per kind of kernel.

`summarize(fn, calls)` traces `calls` calls of `fn` (which must block) and
returns, per call: the wall time, the time the device was busy (the union of
its kernels' intervals: the rest is launch gaps and host waits), and the
kernels' time by kind (attention, convolution, matmul, copy, other fusions)
and by name (the top 25). On a CPU, where XLA runs ops on host threads, the
events that name their HLO op are summed instead. That undercounts: in a
jax 0.10.2 trace of adm64_reduced's step, Eigen's convolutions ran on
threads of their own without that name (0.1 s of convolutions counted in a
14 s step), so a CPU summary says where XLA's own ops spend their time.
"""
from __future__ import annotations

import collections
import glob
import re
import tempfile
import time

KINDS = (  # first match wins; on lower-cased kernel or op names
    ("attention", re.compile(r"fmha|flash|sdpa|attn|attention|softmax")),
    ("convolution", re.compile(r"conv|fprop|dgrad|wgrad|implicit_gemm")),
    ("matmul", re.compile(r"gemm|nvjet|cutlass|matmul|dot|ynn")),
    ("copy", re.compile(r"memcpy|memset|copy|transpose")),
)
TOP = 25
# Lines of a device plane that summarize kernels rather than run them.
NOT_KERNELS = ("XLA Modules", "XLA Ops", "Steps", "Launch Stats", "Source code", "XLA TraceMe")


def kind_of(name: str) -> str:
  lowered = name.lower()
  return next((kind for kind, pattern in KINDS if pattern.search(lowered)), "other fusion")


def device_events(xspace_path: str):
  """[(name, start_ns, duration_ns)] of the kernels on the device's streams,
  or of the XLA ops on the host's threads where there is no device plane."""
  from jax.profiler import ProfileData
  planes = list(ProfileData.from_file(xspace_path).planes)
  lines = [line for p in planes if p.name.startswith("/device:") for line in p.lines]
  streams = [line for line in lines if line.name.startswith("Stream")]
  events = [(e.name, e.start_ns, e.duration_ns)
            for line in (streams or [x for x in lines if x.name not in NOT_KERNELS])
            for e in line.events]
  if events:
    return events
  for plane in planes:  # the CPU: ops on the runtime's threads carry an hlo_op stat
    for line in plane.lines:
      for e in line.events:
        if e.duration_ns and any(key == "hlo_op" for key, _ in e.stats):
          events.append((e.name, e.start_ns, e.duration_ns))
  return events


def busy_ns(events) -> float:
  """The union of the events' intervals, in ns."""
  total, end = 0.0, float("-inf")
  for _, start, duration in sorted(events, key=lambda e: e[1]):
    stop = start + duration
    if stop > end:
      total += stop - max(start, end)
      end = stop
  return total


def summarize(fn, calls: int = 3) -> dict:
  """Traces `calls` calls of the blocking `fn`; per-call milliseconds."""
  import jax
  folder = tempfile.mkdtemp(prefix="device_profile_")
  with jax.profiler.trace(folder):
    start = time.perf_counter()
    for _ in range(calls):
      fn()
    wall_ms = 1e3 * (time.perf_counter() - start) / calls
  paths = glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)
  if not paths:
    return {"error": "the trace wrote no xplane file"}
  events = device_events(paths[0])
  per_call = lambda ns: round(ns / 1e6 / calls, 3)  # noqa: E731
  by_name, count = collections.Counter(), collections.Counter()
  for name, _, duration in events:
    by_name[name] += duration
    count[name] += 1
  by_kind = collections.Counter()
  for name, duration in by_name.items():
    by_kind[kind_of(name)] += duration
  kernel_ns = sum(by_name.values())
  return {
      "calls": calls, "wall_ms_per_call": round(wall_ms, 3),
      "busy_ms_per_call": per_call(busy_ns(events)),
      "kernel_ms_per_call": per_call(kernel_ns),
      "kernels_per_call": round(len(events) / calls, 1),
      "by_kind_ms": {kind: per_call(ns) for kind, ns in by_kind.most_common()},
      "top_kernels": [{"name": name[:160], "kind": kind_of(name), "ms": per_call(ns),
                       "count": round(count[name] / calls, 1),
                       "share": round(ns / kernel_ns, 4)}
                      for name, ns in by_name.most_common(TOP)],
  }
