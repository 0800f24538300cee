"""Never lose a run: exact resume after SIGKILL, SIGTERM preemption, restore on
other meshes, non-finite steps skipped, export, and one-line errors."""
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from diffusion_jax import export, parallel, validation
from diffusion_jax.training import checkpoint as ckpt_lib
from diffusion_jax.training import loop, run_guard, state as state_lib, tasks
from train_helpers import data_dir, quick_config, run_steps

ROOT = pathlib.Path(__file__).resolve().parent.parent
QUICK = "--config=configs/shapes_class_cond.py:quick"


def cli(workdir, *overrides, wait=True, env=None):
  cmd = [sys.executable, "-m", "diffusion_jax.main", "--mode=train", QUICK,
         f"--workdir={workdir}", *overrides]
  env = dict(os.environ, DIFFUSION_JAX_DATA_DIR=data_dir(), **(env or {}))
  if wait:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def steps_on_disk(workdir):
  folder = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def wait_for_checkpoint(workdir, proc, timeout=300):
  start = time.time()
  while not steps_on_disk(workdir):
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    assert time.time() - start < timeout, "no checkpoint appeared"
    time.sleep(0.02)


def all_params(workdir, step=None):
  state, _, _ = export.load_train_state(workdir, step)
  leaves = jax.tree_util.tree_flatten_with_path(
      {"params": state.params, "ema": state.ema_params, "opt": state.opt_state})[0]
  return int(state.step), {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


RUN = ("--config.train.num_steps=120", "--config.train.checkpoint_every=10",
       "--config.train.log_every=10")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  result = cli(workdir, *RUN)
  assert result.returncode == 0, result.stderr[-3000:]
  return all_params(workdir)


def assert_bitwise_equal(got, expected):
  assert got[0] == expected[0]
  assert got[1].keys() == expected[1].keys()
  for name, value in expected[1].items():
    np.testing.assert_array_equal(got[1][name], value, err_msg=name)


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_equal(tmp_path, uninterrupted):
  proc = cli(tmp_path, *RUN, wait=False)
  wait_for_checkpoint(tmp_path, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = steps_on_disk(tmp_path)
  assert killed_at and max(killed_at) < 120, killed_at  # really killed mid-way
  result = cli(tmp_path, *RUN)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"resumed from the checkpoint at step {max(killed_at)}" in result.stderr
  assert_bitwise_equal(all_params(tmp_path), uninterrupted)


@pytest.mark.slow
def test_sigterm_saves_at_the_current_step_and_resumes(tmp_path, uninterrupted):
  proc = cli(tmp_path, *RUN, wait=False)
  wait_for_checkpoint(tmp_path, proc)
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=300)[0]
  assert proc.returncode == run_guard.EXIT_PREEMPTED, output[-3000:]
  step = preempted_step(output)
  assert 10 <= step < 120 and max(steps_on_disk(tmp_path)) == step
  result = cli(tmp_path, *RUN)
  assert result.returncode == 0, result.stderr[-3000:]
  assert_bitwise_equal(all_params(tmp_path), uninterrupted)


def preempted_step(output):
  line = next(l for l in output.splitlines() if l.startswith("preempted: saved"))
  return int(line.split("step ")[1].split(";")[0])


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path):
  """2 processes x 2 CPU devices: the process that gets SIGTERM tells the
  other, both save the same step together and exit as preempted."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
  procs = [cli(tmp_path, *RUN, f"--coordinator_address=localhost:{port}",
               "--num_processes=2", f"--process_id={i}", wait=False, env=env)
           for i in range(2)]
  try:
    wait_for_checkpoint(tmp_path, procs[0])
    procs[1].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=300)[0] for p in procs]
  finally:  # a process left waiting on a collective must not outlive the test
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [run_guard.EXIT_PREEMPTED] * 2, \
      "\n".join(o[-2000:] for o in outputs)
  steps = [preempted_step(o) for o in outputs]
  assert steps[0] == steps[1] and 10 <= steps[0] < 120, steps
  assert max(steps_on_disk(tmp_path)) == steps[0]
  assert all_params(tmp_path)[0] == steps[0]


def test_save_on_eight_devices_restore_on_one_and_on_two_by_two(tmp_path):
  config = quick_config(**{"data.batch_size": 16})
  state, _ = run_steps(config, parallel.make_mesh(data=2, fsdp=4), 2)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path))
  checkpointer.save(2, state, {"x": 1}, {"y": 2})
  checkpointer.wait()
  expected = jax.tree.map(np.asarray, state)
  abstract = jax.eval_shape(lambda s: s, state)
  for mesh in (parallel.make_mesh(devices=jax.devices()[:1]),
               parallel.make_mesh(data=2, fsdp=2, devices=jax.devices()[:4])):
    target = state_lib.abstract_with_shardings(abstract,
                                               state_lib.state_shardings(mesh, abstract))
    restored, config_json, meta, step = checkpointer.restore(target)
    assert step == 2 and config_json == {"x": 1} and meta == {"y": 2}
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
      assert got.sharding.mesh.shape == mesh.shape or got.ndim == 0
      np.testing.assert_array_equal(np.asarray(got), want)
  checkpointer.close()


def test_nan_batch_is_skipped_and_counted():
  from diffusion_jax.data.pipeline import ImageData
  config = quick_config()
  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  data = ImageData(config.data, seed=0, global_batch_size=8)
  task = tasks.make_task(config, data.info)
  state, shardings = state_lib.create_train_state(task.init_params, task.optimizer,
                                                  (0.999,), 0, mesh)
  step_fn = loop.compile_step(task, mesh, shardings)
  state, _ = step_fn(state, parallel.global_batch(data.local_batch(0), mesh))
  before = jax.tree.map(np.asarray, state)
  bad = data.local_batch(1)
  bad["image"][0, 3, 3, 1] = np.nan
  state, metrics = step_fn(state, parallel.global_batch(bad, mesh))
  assert int(metrics["skipped"]) == 1 and int(state.nonfinite_total) == 1
  assert int(state.step) == 2 and int(state.nonfinite_streak) == 1
  for name in ("params", "opt_state", "ema_params", "rng"):
    for got, want in zip(jax.tree.leaves(getattr(state, name)),
                         jax.tree.leaves(getattr(before, name))):
      np.testing.assert_array_equal(got, want, err_msg=name)
  state, metrics = step_fn(state, parallel.global_batch(data.local_batch(2), mesh))
  assert int(metrics["skipped"]) == 0 and int(state.nonfinite_streak) == 0
  assert int(state.nonfinite_total) == 1


def test_consecutive_nonfinite_steps_stop_the_run_with_checkpoint_intact(
    tmp_path, monkeypatch, caplog):
  from diffusion_jax.data.pipeline import ImageData
  original = ImageData.local_batch

  def poisoned(self, step):
    batch = original(self, step)
    if step >= 4:  # batches of steps 5, 6, ... (steps count from 1)
      batch["image"][:] = np.nan
    return batch
  monkeypatch.setattr(ImageData, "local_batch", poisoned)
  config = quick_config(**{"train.num_steps": 20, "train.log_every": 1,
                           "train.checkpoint_every": 2, "train.max_nonfinite_steps": 3})
  with pytest.raises(run_guard.NonFiniteError, match="3 consecutive steps.*step 6"):
    loop.train_and_evaluate(config, str(tmp_path))
  assert "skipped: non-finite" in caplog.text
  assert steps_on_disk(tmp_path) == [2, 4, 6]
  _, at_4 = all_params(tmp_path, 4)
  _, at_6 = all_params(tmp_path, 6)
  for name in at_4:
    if ".params" in name or "'params'" in name:
      np.testing.assert_array_equal(at_6[name], at_4[name], err_msg=name)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("short")
  loop.train_and_evaluate(quick_config(), str(workdir))
  return workdir


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, short_run, caplog):
  workdir = tmp_path / "run"
  shutil.copytree(short_run, workdir)
  for path in (workdir / "checkpoints" / "4" / "state").rglob("*"):
    if path.is_file() and path.stat().st_size > 0 and "metadata" not in path.name:
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  step, _ = all_params(workdir)
  assert step == 2
  assert "step 4" in caplog.text and "unreadable" in caplog.text


def test_different_config_in_workdir_is_refused(tmp_path, short_run):
  workdir = tmp_path / "run"
  shutil.copytree(short_run, workdir)
  result = cli(workdir, "--config.diffusion.schedule=linear")
  assert result.returncode == 2
  assert "holds a run of a different config (diffusion.schedule: 'cosine' -> 'linear')" \
      in result.stderr
  result = cli(workdir, "--config.model.channels=32", "--config.model.num_groups=8")
  assert result.returncode == 2
  error = [l for l in result.stderr.splitlines() if l.startswith("error:")][0]
  assert "does not match the model: params/input_blocks_0_0/bias has shape (16,) there but (32,)" in error
  # Starting over is allowed on request, and keeps the old run aside.
  result = cli(workdir, "--config.diffusion.schedule=linear", "--config.resume=False")
  assert result.returncode == 0, result.stderr[-2000:]
  assert list(workdir.glob("checkpoints.replaced-*/4"))


def test_export_and_load(tmp_path, short_run):
  from safetensors.numpy import load_file
  import diffusion_jax
  folder = export.export_model(short_run, tmp_path / "export")
  flat = load_file(str(folder / "params.safetensors"))  # no JAX, no Orbax needed
  assert "input_blocks_0_0/kernel" in flat
  from_workdir, from_export = diffusion_jax.load(short_run), diffusion_jax.load(folder)
  assert from_export.step == from_workdir.step == 4
  for a, b in zip(jax.tree.leaves(from_workdir.params), jax.tree.leaves(from_export.params)):
    np.testing.assert_array_equal(a, b)
  images = from_export.sample(labels=[0, 5], steps="3")
  assert images.shape == (2, 16, 16, 3) and np.abs(images).max() <= 1
  np.testing.assert_allclose(images, from_workdir.sample(labels=[0, 5], steps="3"), atol=1e-6)
  with pytest.raises(ValueError, match=r"labels \[18\] out of range"):
    from_export.sample(labels=[18])
  _asking_again_does_not_recompile(from_export)
  with pytest.raises(ValueError, match="are 8x8 but the model takes 16x16"):
    from_export.encode(np.zeros((1, 8, 8, 3), np.uint8), labels=[0])


def _asking_again_does_not_recompile(bundle):
  """Sampling or encoding again with the same settings reuses the compiled
  program (no new trace of the model); other settings compile anew."""
  traces = []
  apply = bundle.task.apply
  bundle.task.apply = lambda *args, **kwargs: (traces.append(1), apply(*args, **kwargs))[1]
  bundle.sample(labels=[1, 2], steps="3", seed=1)
  bundle.encode(np.zeros((2, 16, 16, 3), np.uint8), labels=[0, 1], steps="3")
  traced = len(traces)
  assert traced > 0
  bundle.sample(labels=[3, 4], steps="3", seed=2)
  x_T = bundle.encode(np.full((2, 16, 16, 3), 200, np.uint8), labels=[2, 3], steps="3")
  assert x_T.shape == (2, 16, 16, 3) and np.isfinite(x_T).all()
  assert len(traces) == traced
  bundle.sample(labels=[1, 2], steps="4")
  assert len(traces) > traced


def test_validation_messages():
  assert validation.check_images(np.full((2, 4, 4, 3), 255, np.uint8)).max() == 1.0
  with pytest.raises(ValueError, match="have 1 channels but the model takes 3"):
    validation.check_images(np.zeros((2, 4, 4, 1)), channels=3)
  with pytest.raises(ValueError, match="look like \\[0, 255\\]"):
    validation.check_images(np.full((1, 4, 4, 3), 200.0))
  with pytest.raises(ValueError, match="NaN"):
    validation.check_images(np.full((1, 4, 4, 3), np.nan))
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    validation.check_images(np.zeros((4, 4)))
  with pytest.raises(ValueError, match="mask must have shape"):
    validation.check_mask(np.ones((2, 4, 4, 3)), (2, 4, 4, 3))
  with pytest.raises(ValueError, match="0 \\(fill\\) or 1 \\(keep\\)"):
    validation.check_mask(np.full((2, 4, 4, 1), 0.5), (2, 4, 4, 3))
  with pytest.raises(ValueError, match="not class-conditional"):
    validation.check_labels([1], None)
  with pytest.raises(ValueError, match="3 labels for a batch of 2"):
    validation.check_labels([1, 2, 3], 10, 2)


def test_keep_last_n_plus_every_k_and_temporary_folders_ignored(tmp_path):
  config = quick_config(**{"train.num_steps": 8, "train.checkpoint_every": 1,
                           "train.keep_checkpoints": 2, "train.keep_every": 4,
                           "train.log_every": 4})
  loop.train_and_evaluate(config, str(tmp_path))
  assert steps_on_disk(tmp_path) == [4, 7, 8]
  # An unfinished save (Orbax's temporary folder) is never taken for a step.
  (tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp-1234567").mkdir()
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"))
  assert checkpointer.latest_step() == 8 and checkpointer.all_steps() == [4, 7, 8]
  checkpointer.close()


def test_bf16_compute_keeps_float32_state():
  config = quick_config(**{"model.dtype": "bfloat16"})
  state, losses = run_steps(config, parallel.make_mesh(devices=jax.devices()[:1]), 2)
  assert np.all(np.isfinite(losses))
  dtypes = {leaf.dtype for leaf in jax.tree.leaves(
      (state.params, state.opt_state, state.ema_params)) if leaf.ndim > 0}
  assert dtypes == {np.dtype("float32")}
