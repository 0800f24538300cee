"""The GPU suite's machinery, on the CPU: the pool times one job at a time,
stops what outlives the deadline, keeps failures; the profile summary
classifies kernels and counts the device's busy time as a union."""
import json
import pathlib
import sys
import textwrap

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))

import device_profile  # noqa: E402
import gpu_suite  # noqa: E402

# A job that records when it held the device, then fails if asked to.
JOB = textwrap.dedent("""
    import argparse, json, sys, time
    sys.path.insert(0, {benchmarks!r})
    from common import gpu_turn
    parser = argparse.ArgumentParser()
    parser.add_argument("--sleep", type=float)
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    with gpu_turn():
      start = time.time()
      time.sleep(args.sleep)
      stop = time.time()
    if args.fail:
      sys.exit("the job failed on purpose")
    json.dump({{"benchmark": "fake", "held": [start, stop]}}, open(args.out, "w"))
""")


def test_jobs_time_one_at_a_time_and_the_deadline_stops_the_rest(tmp_path):
  script = tmp_path / "job.py"
  script.write_text(JOB.format(benchmarks=str(gpu_suite.HERE)))
  job = lambda name, *flags: gpu_suite.Job(name, [str(script), *flags])  # noqa: E731
  jobs = [job("a", "--sleep=0.4"), job("b", "--sleep=0.4"), job("c", "--sleep=0.4"),
          job("broken", "--sleep=0", "--fail"), job("slow", "--sleep=60"),
          job("late", "--sleep=0")]
  jobs[-1].weight = 3  # waits for a free pool, which the slow job never gives
  gpu_suite.Suite(jobs, tmp_path, slots=3, deadline_s=8).run()
  report = json.loads((tmp_path / "suite.json").read_text())
  ran = report["jobs"]
  held = sorted(ran[name]["result"]["held"] for name in "abc")
  assert all(ran[name]["outcome"] == "done" for name in "abc")
  assert all(first[1] <= second[0] for first, second in zip(held, held[1:])), held
  assert ran["broken"]["outcome"] == "exit 1"
  assert "the job failed on purpose" in ran["broken"]["log_tail"][-1]
  assert ran["slow"]["outcome"] == "stopped at the deadline"
  assert report["not_started"] == ["late"]
  assert (tmp_path / "logs.tar.gz").stat().st_size > 0


def test_the_dry_run_asks_for_cpu_sizes_only():
  for job in map(gpu_suite.dry_run, gpu_suite.JOBS):
    assert not any(a in ("--device=cuda", "--jax_attention=cudnn", "--models=adm64",
                         "--model=adm64", "--models=glide_base") for a in job.argv), job
    assert all(a in ("--batch=2", "--batches=2") for a in job.argv if a.startswith("--batch"))


def test_kernels_are_classified_by_name():
  kinds = {
      "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16": "attention",
      "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc": "convolution",
      "sm90_xmma_dgrad_implicit_gemm_bf16": "convolution",
      "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT": "matmul",
      "triton_gemm_dot_fusion_3": "matmul",
      "loop_multiply_fusion_12": "other fusion",
      "input_reduce_fusion_4": "other fusion",
      "Memcpy DtoD (Device -> Device)": "copy",
  }
  assert {name: device_profile.kind_of(name) for name in kinds} == kinds


def test_busy_time_is_the_union_of_kernel_intervals():
  events = [("a", 0, 10), ("b", 5, 10), ("c", 20, 5), ("d", 21, 1)]  # (name, start, ns)
  assert device_profile.busy_ns(events) == 15 + 5


def test_a_traced_step_is_summed_by_kind():
  step = jax.jit(lambda x: jnp.tanh(x @ x).sum())
  x = jnp.ones((256, 256))
  step(x).block_until_ready()
  summary = device_profile.summarize(lambda: step(x).block_until_ready(), calls=2)
  assert summary["kernels_per_call"] >= 1
  assert 0 < summary["busy_ms_per_call"] <= summary["kernel_ms_per_call"] + 1e-3
  assert abs(sum(summary["by_kind_ms"].values()) - summary["kernel_ms_per_call"]) < 0.01
  assert sum(k["share"] for k in summary["top_kernels"]) <= 1.0001


def test_a_rerun_replaces_the_jobs_it_ran():
  import gpu_report
  first = {"jobs": {"a": {"outcome": "done", "result": 1},
                    "b": {"outcome": "done", "result": {"error": "cuda:0 and cpu"}},
                    "c": {"outcome": "done", "result": 3}},
           "not_started": ["d"]}
  rerun = {"jobs": {"b": {"outcome": "stopped at the deadline", "result": None},
                    "d": {"outcome": "done", "result": 4}}, "not_started": []}
  report = gpu_report.merged([first, rerun])
  assert {n: e["result"] for n, e in report["jobs"].items()} == {"a": 1, "b": None, "c": 3,
                                                                 "d": 4}
  assert report["not_started"] == [] and first["not_started"] == ["d"]  # first untouched
