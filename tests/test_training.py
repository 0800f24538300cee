"""Training: loss falls, one compile, multi-device and multi-process equality,
the loop end to end, and clear errors for bad input."""
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from diffusion_jax import parallel
from train_helpers import data_dir, gathered_params, quick_config, run_steps

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_loss_falls_on_a_tiny_run():
  config = quick_config(**{"optim.lr": 2e-3, "data.batch_size": 16})
  _, losses = run_steps(config, parallel.make_mesh(devices=jax.devices()[:1]), 60)
  assert np.mean(losses[-15:]) < 0.6 * np.mean(losses[:5]), losses


def test_train_step_compiles_once():
  from diffusion_jax.data.pipeline import ImageData
  from diffusion_jax.training import loop, state as state_lib, tasks
  config = quick_config()
  mesh = parallel.make_mesh(devices=jax.devices()[:2])
  data = ImageData(config.data, seed=0, global_batch_size=8)
  task = tasks.make_task(config, data.info)
  traces = []
  original = task.train_step
  task.train_step = lambda state, batch: (traces.append(1), original(state, batch))[1]
  state, shardings = state_lib.create_train_state(task.init_params, task.optimizer,
                                                  (0.999,), 0, mesh)
  step_fn = loop.compile_step(task, mesh, shardings)
  for step in range(4):
    state, _ = step_fn(state, parallel.global_batch(data.local_batch(step), mesh))
  assert len(traces) == 1
  assert int(state.step) == 4


def test_one_device_equals_eight_with_fsdp():
  config = quick_config(**{"data.batch_size": 16})
  single, losses_1 = run_steps(config, parallel.make_mesh(devices=jax.devices()[:1]), 3)
  mesh = parallel.make_mesh(data=2, fsdp=4)
  sharded, losses_8 = run_steps(config, mesh, 3)
  # FSDP really shards: some parameter lives in quarters on the devices.
  specs = [leaf.sharding.spec for leaf in jax.tree.leaves(sharded.params)]
  assert any(parallel.FSDP in spec for spec in specs)
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
  a, b = gathered_params(single), gathered_params(sharded)
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_allclose(b[name], a[name], atol=2e-6, rtol=1e-4, err_msg=name)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
  """2 processes x 2 CPU devices (gloo on localhost) == 4 devices in one process."""
  port, out = _free_port(), str(tmp_path / "params.npz")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  worker = str(ROOT / "tests" / "train_helpers.py")
  procs = [subprocess.Popen([sys.executable, worker, str(i), "2", str(port), out, "3"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
  result = json.loads(pathlib.Path(out + ".json").read_text())
  assert result["devices"] == 4
  config = quick_config(**{"data.batch_size": 8})
  reference, losses = run_steps(config, parallel.make_mesh(data=-1, fsdp=2,
                                                           devices=jax.devices()[:4]), 3)
  np.testing.assert_allclose(result["losses"], losses, rtol=1e-5)
  expected = gathered_params(reference)
  with np.load(out) as got:
    for name in expected:
      np.testing.assert_allclose(got[name], expected[name], atol=2e-6, rtol=1e-4,
                                 err_msg=name)


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  from diffusion_jax.training import loop
  workdir = tmp_path_factory.mktemp("run")
  loop.train_and_evaluate(quick_config(), str(workdir))
  return workdir


def test_loop_writes_checkpoint_samples_and_logs(trained_workdir):
  from PIL import Image
  from diffusion_jax.data import shapes
  checkpoints = sorted(p.name for p in (trained_workdir / "checkpoints").iterdir())
  assert checkpoints == ["2", "4"]
  grid = trained_workdir / "samples" / "step_000004"
  with np.load(grid.with_suffix(".npz")) as samples:
    assert samples["images"].shape == (shapes.NUM_CLASSES, 2, 16, 16, 3)
    assert samples["images"].dtype == np.uint8
    np.testing.assert_array_equal(samples["labels"][:, 0], np.arange(shapes.NUM_CLASSES))
  assert Image.open(grid.with_suffix(".png")).size[1] > shapes.NUM_CLASSES * 16
  assert list((trained_workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_sample_mode_restores_and_writes_a_grid(trained_workdir):
  from diffusion_jax.training import loop
  config = quick_config(**{"sample.labels": (0, 5), "sample.per_class": 3})
  path = loop.sample_from_workdir(config, str(trained_workdir))
  with np.load(path.with_suffix(".npz")) as samples:
    assert samples["images"].shape == (2, 3, 16, 16, 3)
    np.testing.assert_array_equal(samples["labels"], [[0] * 3, [5] * 3])


def test_resume_continues_from_the_latest_checkpoint(trained_workdir):
  from diffusion_jax.training import loop
  config = quick_config(**{"train.num_steps": 6})
  state = loop.train_and_evaluate(config, str(trained_workdir))
  assert int(state.step) == 6


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "diffusion_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, DIFFUSION_JAX_DATA_DIR=data_dir()))


@pytest.mark.parametrize("override,message", [
    ("--config.data.batch_size=7", "batch size 7 is not divisible"),
    ("--config.data.name=no_such_dataset", "no_such_dataset"),
    ("--config.data.image_size=15", "divisible by 2"),
    ("--config.model.chanels=8", "chanels"),
])
def test_bad_input_is_a_one_line_error(tmp_path, override, message):
  result = run_cli("--mode=train", "--config=configs/shapes_class_cond.py:quick",
                   f"--workdir={tmp_path}", override)
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]
  assert "Traceback" not in result.stderr


def test_classifier_filter_drops_what_the_classifier_flags(tmp_path, trained_workdir):
  import jax.numpy as jnp
  from configs import shapes_classifier
  from diffusion_jax.data import builders, pipeline
  from diffusion_jax.training import filtering, loop
  digits = {"data.name": "digits/16", "data.data_dir": data_dir()}
  clf_config = shapes_classifier.get_config("quick")
  for key, value in digits.items():
    setattr(clf_config.data, key.split(".")[1], value)
  loop.train_and_evaluate(clf_config, str(tmp_path))
  # What the classifier says of every training example, computed here directly.
  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  data = pipeline.ImageData(quick_config(**digits).data, seed=0, global_batch_size=8)
  task, params = filtering.load_classifier(str(tmp_path), data.info, mesh)
  raw = builders.load_builder("digits/16", data_dir()).as_data_source(split="train")
  images = np.stack([pipeline.to_model_image(raw[i]["image"], 16, 1) for i in range(len(raw))])
  logits = task.apply(params, jnp.asarray(images), jnp.zeros(len(images), int))
  drop_prob = np.asarray(jax.nn.softmax(logits, -1))[:, :5].sum(-1)
  threshold = float(np.median(drop_prob))
  config = quick_config(**digits)
  config.data.filter.classifier_workdir = str(tmp_path)
  config.data.filter.classifier_drop_labels = tuple(range(5))
  config.data.filter.classifier_threshold = threshold
  filtered = loop.load_data(config, mesh)
  assert filtered.dropped == int(np.sum(drop_prob > threshold))
  assert 0.3 * len(raw) < filtered.dropped < 0.7 * len(raw)
  with pytest.raises(ValueError, match="not a classifier"):
    config.data.filter.classifier_workdir = str(trained_workdir)
    loop.load_data(config, mesh)
