"""Never lose a run: exact resume after SIGKILL, SIGTERM preemption, restore on
other meshes, non-finite steps skipped, export, and one-line errors."""
import shutil
import signal

import jax
import numpy as np
import pytest

from conftest import (
  RUN,
  TRAINED_RUN,
  all_params,
  assert_bitwise_equal,
  cli,
  error_line,
  free_port,
  one_device,
  quick_config,
  run_steps,
  steps_on_disk,
  wait_for_checkpoint,
)
from diffusion_jax import checkpoint as ckpt_lib
from diffusion_jax import parallel, validation
from diffusion_jax.data import pipeline
from diffusion_jax.training import loop, run_guard, tasks


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_is_bitwise_equal(tmp_path_factory,
                                                         uninterrupted_run):
  """A run stopped by SIGTERM (it saves where it is and exits 75), resumed,
  killed by SIGKILL mid-way (it loses the steps since its last checkpoint),
  and resumed again ends bitwise equal to a run never interrupted."""
  expected = uninterrupted_run
  workdir = tmp_path_factory.mktemp("interrupted")
  proc = cli(workdir, *RUN, wait=False)
  wait_for_checkpoint(workdir, proc)
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=300)[0]
  assert proc.returncode == run_guard.EXIT_PREEMPTED, output[-3000:]
  stopped = preempted_step(output)
  assert 5 <= stopped < 20 and max(steps_on_disk(workdir)) == stopped
  proc = cli(workdir, *RUN, wait=False)
  wait_for_checkpoint(workdir, proc, after=stopped)
  proc.send_signal(signal.SIGKILL)
  output = proc.communicate(timeout=300)[0]
  killed_at = max(steps_on_disk(workdir))
  assert f"resumed from the checkpoint at step {stopped}" in output
  assert stopped < killed_at < 20, killed_at  # really killed mid-way
  result = cli(workdir, *RUN)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"resumed from the checkpoint at step {killed_at}" in result.stderr
  assert_bitwise_equal(all_params(workdir), expected)


def preempted_step(output):
  line = next(x for x in output.splitlines() if x.startswith("preempted: saved"))
  return int(line.split("step ")[1].split(";")[0])


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path):
  """2 processes x 2 CPU devices: the process that gets SIGTERM tells the
  other, both save the same step together and exit as preempted."""
  port = free_port()
  procs = [cli(tmp_path, *RUN, f"--coordinator_address=localhost:{port}",
               "--num_processes=2", f"--process_id={i}", wait=False, devices=2)
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
  assert steps[0] == steps[1] and 5 <= steps[0] < 20, steps
  assert max(steps_on_disk(tmp_path)) == steps[0]
  assert all_params(tmp_path)[0] == steps[0]


def test_nan_batch_is_skipped_and_counted():
  config = quick_config()
  mesh = one_device()
  task = tasks.make_task(config, pipeline.read_info(config.data))
  data = pipeline.ImageData(config.data, seed=0, global_batch_size=8,
                            example_fn=task.spec.example_fn)
  state, shardings = task.create_state(mesh, 0)
  step_fn = tasks.compile_step(task, mesh, shardings)
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
  original = pipeline.ImageData.local_batch

  def poisoned(self, step):
    batch = original(self, step)
    if step >= 4:  # batches of steps 5, 6, ... (steps count from 1)
      batch["image"][:] = np.nan
    return batch
  monkeypatch.setattr(pipeline.ImageData, "local_batch", poisoned)
  config = quick_config(**TRAINED_RUN, **{"train.num_steps": 20, "train.log_every": 1,
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


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, trained_workdir, caplog):
  workdir = tmp_path / "run"
  shutil.copytree(trained_workdir, workdir)
  for path in (workdir / "checkpoints" / "4" / "state").rglob("*"):
    if path.is_file() and path.stat().st_size > 0 and "metadata" not in path.name:
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  step, _ = all_params(workdir)
  assert step == 2
  assert "step 4" in caplog.text and "unreadable" in caplog.text
  # Asked for step 4 by name, loading refuses rather than hand back step 2.
  from diffusion_jax.inference import loading
  with pytest.raises(ValueError, match="the checkpoint at step 4 does not read"):
    loading.load(workdir, step=4)
  assert loading.load(workdir, step=2).step == 2


def test_different_config_in_workdir_is_refused(tmp_path, trained_workdir):
  workdir = tmp_path / "run"
  shutil.copytree(trained_workdir, workdir)
  overrides = dict(TRAINED_RUN, **{"diffusion.schedule": "linear"})
  with pytest.raises(ValueError, match=r"holds a run of a different config "
                                       r"\(diffusion.schedule: 'cosine' -> 'linear'\)"):
    loop.train_and_evaluate(quick_config(**overrides), str(workdir))
  with pytest.raises(ValueError, match=r"model.channels: 16 -> 32"):
    loop.train_and_evaluate(quick_config(**TRAINED_RUN, **{"model.channels": 32}), str(workdir))
  # Starting over is allowed on request, and keeps the old run aside.
  restart = quick_config(**TRAINED_RUN, **{"seed": 1, "resume": False})
  assert int(loop.train_and_evaluate(restart, str(workdir)).step) == 4
  assert list(workdir.glob("checkpoints.replaced-*/4"))
  result = cli(workdir, "--config.train.num_steps=5")  # the CLI: one line, status 2
  assert result.returncode == 2
  assert ("holds a run of a different config (diffusion.parameterization: 'eps' -> 'v'; "
          "model.attention_resolutions") in error_line(result)


def test_a_field_added_since_the_run_started_counts_at_its_default():
  saved = {"model": {"channels": 16}, "train": {"num_steps": 4}}
  defaults = {"model": {"channels": 64, "feature_dim": 128}}
  at_default = {"model": {"channels": 16, "feature_dim": 128}, "train": {"num_steps": 9}}
  assert run_guard.config_differences(saved, at_default, defaults) == []
  changed = {"model": {"channels": 16, "feature_dim": 64}}
  assert run_guard.config_differences(saved, changed, defaults) == [
      "model.feature_dim: None -> 64"]
  # Without a default to stand in, a missing field is a difference.
  assert run_guard.config_differences(saved, at_default) == [
      "model.feature_dim: None -> 128"]


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
  config = quick_config(**TRAINED_RUN, **{"train.num_steps": 8, "train.checkpoint_every": 2,
                                          "train.keep_checkpoints": 2, "train.keep_every": 4,
                                          "train.log_every": 4})
  loop.train_and_evaluate(config, str(tmp_path))
  assert steps_on_disk(tmp_path) == [4, 6, 8]  # the last 2, and every 4th (2 deleted)
  # An unfinished save (Orbax's temporary folder) is never taken for a step.
  (tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp-1234567").mkdir()
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"))
  assert checkpointer.latest_step() == 8 and checkpointer.all_steps() == [4, 6, 8]
  checkpointer.close()


def test_bf16_compute_keeps_float32_state():
  config = quick_config(**{"model.dtype": "bfloat16"})
  state, losses = run_steps(config, one_device(), 2)
  assert np.all(np.isfinite(losses))
  dtypes = {leaf.dtype for leaf in jax.tree.leaves(
      (state.params, state.opt_state, state.ema_params)) if leaf.ndim > 0}
  assert dtypes == {np.dtype("float32")}
