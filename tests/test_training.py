"""Training: loss falls, one compile, multi-device and multi-process equality,
the loop end to end, importance-sampled timesteps, fine-tuning, training on
a folder of images, and clear errors for bad input."""
import functools
import importlib.util
import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import (
  ONE_DEVICE,
  QUICK,
  ROOT,
  TINY_MODEL,
  TRAINED_RUN,
  error_line,
  flat_arrays,
  free_port,
  one_device,
  quick_config,
  run_cli,
  run_steps,
)
from diffusion_jax import diffusion, parallel
from diffusion_jax.data import pipeline
from diffusion_jax.training import loop, tasks


def test_loss_falls_on_a_tiny_run():
  _, losses = run_steps(quick_config(), one_device(), 40)
  assert np.mean(losses[-15:]) < 0.6 * np.mean(losses[:5]), losses


def test_train_step_compiles_once():
  config = quick_config()
  task = tasks.make_task(config, pipeline.read_info(config.data))
  data = pipeline.ImageData(config.data, seed=0, global_batch_size=8,
                            example_fn=task.spec.example_fn)
  traces = []
  original = task.train_step

  @functools.wraps(original)  # the same program name: a compilation cache hit
  def counted(state, batch):
    traces.append(1)
    return original(state, batch)
  task.train_step = counted
  mesh = one_device()
  state, shardings = task.create_state(mesh, 0)
  step_fn = tasks.compile_step(task, mesh, shardings)
  for step in range(4):
    state, _ = step_fn(state, parallel.global_batch(data.local_batch(step), mesh))
  assert len(traces) == 1
  assert int(state.step) == 4


# Importance-sampled timesteps: the loss history is state too; and the recipe
# options (docs/recipe.md): v targets weighted by min-SNR, a cosine decay,
# a power EMA (EDM2) beside a rate, sampled from by default.
FSDP_RUN = {"diffusion.timestep_sampler": "loss_second_moment",
            "diffusion.parameterization": "v", "diffusion.loss_weighting": "min_snr",
            "optim.schedule": "cosine", "train.ema_sigma_rels": (0.1,),
            "sample.ema_sigma_rel": 0.1}


@pytest.fixture(scope="module")
def fsdp_runs():
  """Two steps of FSDP_RUN on one device and on a 2 x 4 (data x fsdp) mesh."""
  config = quick_config(**FSDP_RUN)
  return run_steps(config, one_device(), 2), run_steps(config, parallel.make_mesh(2, 4), 2)


@pytest.mark.parametrize("name,variants", [
    ("shapes_class_cond", ["", "quick", "uncond", "uncond,quick", "32", "64,uncond"]),
    ("digits_class_cond", ["", "quick", "uncond,quick"]),
    ("shapes_classifier", ["", "quick"]),
    ("digits_classifier", ["", "quick"]),
    ("shapes_evaluator", ["", "32", "32,quick"]),
    ("digits_evaluator", ["", "quick"]),
    ("imagenet64_adm", ["", "quick"]),
])
def test_every_config_and_variant_passes_its_checks(name, variants):
  import importlib

  from diffusion_jax import config_lib
  module = importlib.import_module(f"configs.{name}")
  for variant in variants:
    config = module.get_config(variant)
    config_lib.check(config)
    assert config.model.class_conditional == ("uncond" not in variant), variant
  with pytest.raises(ValueError, match="unknown variant 'qiuck'"):
    module.get_config("qiuck")


def test_mesh_takes_the_first_devices_asked_for():
  mesh = parallel.make_mesh(data=1)
  assert mesh.devices.tolist() == [[jax.devices()[0]]]
  assert parallel.make_mesh(data=2, fsdp=2).devices.size == 4
  with pytest.raises(ValueError, match=r"mesh: data=5 x fsdp=2 != 8 devices"):
    parallel.make_mesh(data=5, fsdp=2)


def test_one_device_equals_eight_with_fsdp(fsdp_runs):
  (single, losses_1), (sharded, losses_8) = fsdp_runs
  # FSDP really shards: some parameter lives in quarters on the devices.
  specs = [leaf.sharding.spec for leaf in jax.tree.leaves(sharded.params)]
  assert any(parallel.FSDP in spec for spec in specs)
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
  a = flat_arrays((single.params, single.loss_history, single.ema_params))
  b = flat_arrays((sharded.params, sharded.loss_history, sharded.ema_params))
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_allclose(b[name], a[name], atol=2e-6, rtol=1e-4, err_msg=name)


def test_save_on_eight_devices_restore_on_one_and_on_two_by_two(tmp_path, fsdp_runs):
  from diffusion_jax import checkpoint as ckpt_lib
  from diffusion_jax.training import state as state_lib
  state = fsdp_runs[1][0]
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path))
  checkpointer.save(2, state, {"x": 1}, {"y": 2})
  checkpointer.wait()
  expected = jax.tree.map(np.asarray, state)
  abstract = jax.eval_shape(lambda s: s, state)
  for mesh in (one_device(), parallel.make_mesh(data=2, fsdp=2, devices=jax.devices()[:4])):
    target = state_lib.abstract_with_shardings(abstract,
                                               state_lib.state_shardings(mesh, abstract))
    restored, config_json, meta, step = checkpointer.restore(target)
    assert step == 2 and config_json == {"x": 1} and meta == {"y": 2}
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
      assert got.sharding.mesh.shape == mesh.shape or got.ndim == 0
      np.testing.assert_array_equal(np.asarray(got), want)
  # Restoring into another architecture names the first parameter that differs.
  other = abstract.replace(params=dict(abstract.params, out_2={
      "kernel": jax.ShapeDtypeStruct((3, 3, 16, 6), np.float32),
      "bias": abstract.params["out_2"]["bias"]}))
  with pytest.raises(ValueError, match=r"params/out_2/kernel has shape \(3, 3, 16, 3\) there "
                                       r"but \(3, 3, 16, 6\)"):
    checkpointer.restore(other)
  checkpointer.close()


@pytest.mark.slow
def test_two_processes_train_to_the_end_like_one_process(tmp_path, fsdp_runs):
  """2 CLI processes x 2 CPU devices (gloo on localhost, fsdp 2) train FSDP_RUN
  to completion: the same parameters and loss history as one device, and
  one sample grid, written by process 0."""
  flags = [f"--config.{k}={v}" for k, v in FSDP_RUN.items()]
  port = free_port()
  procs = [run_cli("--mode=train", QUICK, f"--workdir={tmp_path}", *flags,
                   "--config.train.num_steps=2", "--config.mesh.fsdp=2",
                   f"--coordinator_address=localhost:{port}", "--num_processes=2",
                   f"--process_id={i}", devices=2, wait=False) for i in range(2)]
  try:
    logs = [p.communicate(timeout=600)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
  from diffusion_jax import checkpoint as ckpt_lib
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), read_only=True)
  saved, _, _, step = checkpointer.restore_fields(("params", "loss_history"))
  checkpointer.close()
  assert step == 2
  reference = fsdp_runs[0][0]
  got = flat_arrays(saved)
  want = flat_arrays({"params": reference.params,
                      "loss_history": reference.loss_history._asdict()})
  assert got.keys() == want.keys()
  for name in want:
    np.testing.assert_allclose(got[name], want[name], atol=2e-6, rtol=1e-4, err_msg=name)
  assert int(np.sum(saved["loss_history"]["counts"])) == 2 * 8  # every example recorded
  assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
      "step_000002.npz", "step_000002.png"]
  # The power EMA is what the run samples with by default, and an export
  # records it (format 1: a reader that knows no power EMA sees no rate).
  from diffusion_jax.inference import loading
  bundle = loading.load(tmp_path)
  assert bundle.ema_rate == loading.PowerEMA(0.1) and "power EMA sigma_rel 0.1" in repr(bundle)
  exported = loading.export(bundle, tmp_path / "export")
  meta = json.loads((exported / loading.META_FILE).read_text())
  assert meta["format_version"] == 1 and meta["ema_rate"] is None
  assert meta["ema_sigma_rel"] == 0.1
  again = loading.load(exported)
  assert again.ema_rate == loading.PowerEMA(0.1)
  with pytest.raises(ValueError, match="holds the power EMA sigma_rel 0.1 only, not the EMA 0.995"):
    loading.load(exported, ema_rate=0.995)
  exported_arrays, loaded_arrays = flat_arrays(again.params), flat_arrays(bundle.params)
  for name, want in loaded_arrays.items():
    np.testing.assert_array_equal(exported_arrays[name], want, err_msg=name)


def test_loop_writes_checkpoint_samples_and_logs(trained_workdir):
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


def test_resume_continues_from_the_latest_checkpoint(tmp_path, trained_workdir):
  workdir = tmp_path / "run"
  shutil.copytree(trained_workdir, workdir)
  logged, grids = [], []
  state = loop.train_and_evaluate(quick_config(**TRAINED_RUN, **{"train.num_steps": 6}),
                                  str(workdir), on_log=lambda *a: logged.append(a),
                                  on_grid=lambda *a: grids.append(a))
  assert int(state.step) == 6
  # The hooks (a notebook's live curve): the resumed steps' logs, the last grid.
  assert [step for step, _ in logged] == [6]  # log_every 2, from step 4
  assert np.isfinite(logged[0][1]["loss"]) and isinstance(logged[0][1]["loss"], float)
  assert grids == [(6, workdir / "samples" / "step_000006.png")] and grids[0][1].exists()


def test_importance_sampled_timesteps_follow_the_loss_history():
  """With loss_second_moment the step draws t from the history it keeps: a
  full history whose losses are all at t = 7 makes every example t = 7, and
  only that row records the new losses."""
  config = quick_config(**FSDP_RUN)
  task = tasks.make_task(config, pipeline.read_info(config.data))
  data = pipeline.ImageData(config.data, seed=0, global_batch_size=8,
                            example_fn=task.spec.example_fn)
  mesh = one_device()
  state, shardings = task.create_state(mesh, 0)
  num_timesteps, slots = state.loss_history.losses.shape
  assert num_timesteps == config.diffusion.num_timesteps
  losses = np.zeros((num_timesteps, slots), np.float32)
  losses[7] = 1.0
  full = diffusion.LossHistory(jax.numpy.asarray(losses),
                               jax.numpy.full((num_timesteps,), slots, jax.numpy.int32))
  state = state.replace(loss_history=jax.device_put(full, shardings.loss_history))
  step_fn = tasks.compile_step(task, mesh, shardings)
  state, _ = step_fn(state, parallel.global_batch(data.local_batch(0), mesh))
  after = np.asarray(state.loss_history.losses)
  changed = np.flatnonzero(np.any(after != losses, axis=1))
  np.testing.assert_array_equal(changed, [7])
  assert np.all(after[7, -8:] != 1.0)  # 8 new losses, the oldest rolled out


def test_init_from_starts_from_the_trained_weights(tmp_path, trained_workdir):
  from diffusion_jax import checkpoint as ckpt_lib
  from diffusion_jax.inference import loading
  config = quick_config(**TRAINED_RUN, **{"train.init_from": str(trained_workdir)})
  info = pipeline.read_info(config.data)
  task = tasks.make_task(config, info)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"))
  state, _, start = loop.restore_or_init(task, config, one_device(), checkpointer, info)
  checkpointer.close()
  assert start == 0 and int(state.step) == 0
  source = loading.load(trained_workdir)  # the weights sample.ema_rate names
  for name, want in flat_arrays(source.params).items():
    np.testing.assert_array_equal(flat_arrays(state.params)[name], want, err_msg=name)
    np.testing.assert_array_equal(flat_arrays(state.ema_params["0.9"])[name], want)


def test_init_from_another_architecture_names_the_first_parameter(tmp_path, trained_workdir):
  config = quick_config(**{**TRAINED_RUN, "train.init_from": str(trained_workdir),
                           "model.channels": 32})
  with pytest.raises(ValueError, match=r"input_blocks_0_0/bias has shape \(16,\) but .* "
                                       r"builds \(32,\)"):
    loop.train_and_evaluate(config, str(tmp_path))
  assert not list((tmp_path / "checkpoints").glob("[0-9]*"))


def _bad_input(tmp_path, *overrides):
  return run_cli("--mode=train", QUICK, f"--workdir={tmp_path}", *overrides, devices=2)


@pytest.mark.parametrize("override,message", [
    ("--config.data.batch_size=7", "batch size 7 is not divisible"),
    ("--config.data.name=no_such_dataset", "no_such_dataset"),
    ("--config.data.image_size=15", "divisible by 2"),
    ("--config.model.chanels=8",
     "the config has no field 'chanels' in --config.model.chanels=8; did you mean 'channels'?"),
    ("--config.train.num_steps=-5", "train.num_steps is -5; it must be >= 1"),
    ("--config.sample.labels=3,99", "sample.labels [99] out of range"),
    ("--config.sample.ema_rate=0.5", "sample.ema_rate 0.5 is not one of train.ema_rates"),
    ("--config.sample.stesp=5", "no field 'stesp'"),
])
def test_bad_input_is_a_one_line_error_before_any_work(tmp_path, override, message):
  result = _bad_input(tmp_path, override)
  assert result.returncode == 2, result.stderr[-3000:]
  assert message in error_line(result)
  assert not (tmp_path / "checkpoints").exists()  # nothing trained, nothing written


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  """40 PNGs of 20x20 in 2 classes (subfolders): red squares, blue discs."""
  root = tmp_path_factory.mktemp("images")
  rs = np.random.RandomState(0)
  yy, xx = np.mgrid[:20, :20]
  for i in range(40):
    cls = ("blue_discs", "red_squares")[i % 2]
    cy, cx = rs.randint(6, 14, 2)
    image = np.full((20, 20, 3), 240, np.uint8)
    if cls == "red_squares":
      image[(abs(yy - cy) < 4) & (abs(xx - cx) < 4)] = (220, 30, 30)
    else:
      image[(yy - cy) ** 2 + (xx - cx) ** 2 < 16] = (30, 30, 220)
    (root / cls).mkdir(exist_ok=True)
    Image.fromarray(image).save(root / cls / f"{i:02d}.png")
  return root


def test_a_folder_of_images_trains_a_quick_model(tmp_path, image_folder):
  config = quick_config(**ONE_DEVICE, **TINY_MODEL, **{"data.name": f"folder:{image_folder}",
                                         "data.image_size": 16,
                                         "data.data_dir": str(tmp_path / "data")})
  workdir = tmp_path / "run"
  loop.train_and_evaluate(config, str(workdir))
  meta = json.loads((workdir / "checkpoints" / "4" / "meta" / "metadata").read_text())
  assert meta["data_info"]["num_classes"] == 2 and meta["data_info"]["image_size"] == 16
  with np.load(workdir / "samples" / "step_000004.npz") as grid:
    assert grid["images"].shape == (2, 2, 16, 16, 3)


def test_init_from_a_model_of_other_classes_is_refused(tmp_path, trained_workdir, image_folder):
  config = quick_config(**TRAINED_RUN, **{
      "data.name": f"folder:{image_folder}", "data.image_size": 16,
      "data.data_dir": str(tmp_path / "data"), "train.init_from": str(trained_workdir)})
  with pytest.raises(ValueError, match=f"was trained on 18 classes but 'folder:{image_folder}'"
                                       " has 2"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))


def _bad_folder(root, kind):
  root.mkdir()
  if kind == "empty":
    return "no PNG or JPEG images"
  for i, size in enumerate((16, 16, 20) if kind == "mixed sizes" else (16, 16)):
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(root / f"a_{i}.png")
  if kind == "unreadable":
    (root / "b_broken.png").write_bytes(b"not a png")
    return "b_broken.png"
  return "data.image_size"


@pytest.mark.parametrize("kind", ["empty", "mixed sizes", "unreadable"])
def test_a_bad_folder_is_a_one_line_error(tmp_path, kind):
  message = _bad_folder(tmp_path / "images", kind)
  result = _bad_input(tmp_path / "run", f"--config.data.name=folder:{tmp_path / 'images'}",
                      f"--config.data.data_dir={tmp_path / 'data'}")
  assert result.returncode == 2
  assert message in error_line(result)


def test_classifier_filter_drops_what_the_classifier_flags(classifier_workdir, trained_workdir):
  """The filter loads the classifier with its own description of its data:
  trained on 8x8 digits, it filters 16x16 digits at its own size."""
  import jax.numpy as jnp

  from conftest import data_dir
  from diffusion_jax import filtering
  from diffusion_jax.data import builders
  digits = {"data.name": "digits/16"}
  config = quick_config(**digits)
  config.data.filter.classifier_workdir = str(classifier_workdir)
  config.data.filter.classifier_drop_labels = tuple(range(5))
  bundle = filtering.load_classifier(config.data.filter)
  assert (bundle.info.image_size, bundle.info.channels, bundle.info.num_classes) == (8, 1, 10)
  # What the classifier says of every training example, computed here directly.
  raw = builders.load_builder("digits/16", data_dir()).as_data_source(split="train")
  images = np.stack([pipeline.to_model_image(raw[i]["image"], 8, 1) for i in range(len(raw))])
  logits = bundle.spec.apply(bundle.params, jnp.asarray(images), jnp.zeros(len(images), int))
  drop_prob = np.asarray(jax.nn.softmax(logits, -1))[:, :5].sum(-1)
  # A threshold in the widest gap between the middle 30-70% of the values, so
  # that float noise (batches of another size) flips no example across it.
  ranked = np.sort(drop_prob)
  low, high = int(0.3 * len(ranked)), int(0.7 * len(ranked))
  gap = low + int(np.argmax(np.diff(ranked[low:high])))
  threshold = float((ranked[gap] + ranked[gap + 1]) / 2)
  config.data.filter.classifier_threshold = threshold
  filtered = pipeline.ImageData(config.data, seed=0, global_batch_size=8,
                                drop_fn=filtering.classifier_drop_fn(config.data.filter))
  assert filtered.info.image_size == 16
  assert filtered.dropped == int(np.sum(drop_prob > threshold))
  assert 0.3 * len(raw) < filtered.dropped < 0.7 * len(raw)
  config.data.filter.classifier_workdir = str(trained_workdir)
  with pytest.raises(ValueError, match="holds a 16x16 diffusion model of 18 classes, not a "
                                       "classifier"):
    filtering.classifier_drop_fn(config.data.filter)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch not installed")
def test_the_metric_writer_starts_without_importing_pytorch(tmp_path):
  """tensorboardX imports torch where it is installed (1.5 s at every training
  start); our writer hides it while tensorboardX imports, and still writes."""
  code = ("import sys\nfrom diffusion_jax.training import metrics\n"
          f"writer = metrics.MetricWriter({str(tmp_path)!r})\n"
          "writer.write_scalars(1, {'loss': 0.5})\nwriter.close()\n"
          "print('torch imported:', 'torch' in sys.modules)\n"
          "import torch  # importable again afterwards\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "torch imported: False" in result.stdout
  assert list(tmp_path.glob("events.out.tfevents.*"))
