"""Inference: one way to load a trained model (export or workdir), one EMA
choice honoured by every mode, a sampler that compiles once per settings,
guided-diffusion's .npz of N samples, and clear errors."""
import json

import numpy as np
import pytest

import diffusion_jax
from conftest import QUICK, TRAINED_RUN, error_line, flat_arrays, quick_config, run_cli
from diffusion_jax import checkpoint as ckpt_lib
from diffusion_jax.inference import loading, sample_mode
from diffusion_jax.inference.spec import ModelSpec

TRAINED_FLAGS = ("--config.train.ema_rates=0.995,0.9", "--config.train.ema_warmup=False")


def saved_weights(workdir, field):
  checkpointer = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), read_only=True)
  values, _, _, _ = checkpointer.restore_fields((field,))
  checkpointer.close()
  return flat_arrays(values[field])


def assert_same_arrays(got, want):
  assert got.keys() == want.keys()
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_ema_rate_picks_the_weights_load_takes(trained_workdir):
  default = loading.load(trained_workdir)  # the config's sample.ema_rate: 0.995
  assert default.ema_rate == 0.995 and default.step == 4
  assert_same_arrays(flat_arrays(default.params),
                     saved_weights(trained_workdir, "ema_params/0.995"))
  assert_same_arrays(flat_arrays(loading.load(trained_workdir, ema_rate=0.9).params),
                     saved_weights(trained_workdir, "ema_params/0.9"))
  raw = loading.load(trained_workdir, ema_rate=0)
  assert_same_arrays(flat_arrays(raw.params), saved_weights(trained_workdir, "params"))
  # The three really are different weights.
  first = "['out_2']['kernel']"
  assert not np.array_equal(flat_arrays(raw.params)[first], flat_arrays(default.params)[first])
  with pytest.raises(ValueError, match="no EMA at rate 0.5: the run keeps 0.995, 0.9"):
    loading.load(trained_workdir, ema_rate=0.5)


def test_export_mode_writes_the_weights_sample_ema_rate_names(tmp_path, trained_workdir):
  result = run_cli("--mode=export", QUICK, *TRAINED_FLAGS, f"--workdir={trained_workdir}",
                   "--config.sample.ema_rate=0.9", f"--output={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((tmp_path / "meta.json").read_text())["ema_rate"] == 0.9
  exported = diffusion_jax.load(tmp_path)
  assert exported.ema_rate == 0.9
  assert_same_arrays(flat_arrays(exported.params),
                     saved_weights(trained_workdir, "ema_params/0.9"))
  with pytest.raises(ValueError, match="holds the weights at EMA rate 0.9 only, not 0.995"):
    diffusion_jax.load(tmp_path, ema_rate=0.995)


def test_sample_mode_samples_the_weights_sample_ema_rate_names(tmp_path, trained_workdir):
  """Without --config: the run's own saved config, overridden (the CLI tests
  of the other modes all give --config)."""
  result = run_cli("--mode=sample", f"--workdir={trained_workdir}",
                   "--config.sample.ema_rate=0.9", "--config.sample.labels=0,5",
                   "--config.sample.per_class=3", f"--config.sample.output={tmp_path}/grid")
  assert result.returncode == 0, result.stderr[-3000:]
  with np.load(tmp_path / "grid.npz") as grid:
    got, labels = grid["images"].astype(int), grid["labels"]
  np.testing.assert_array_equal(labels, [[0] * 3, [5] * 3])

  def in_process(rate):  # the same grid, sampled here from the weights at `rate`
    bundle = loading.load(trained_workdir, ema_rate=rate)
    images = bundle.sample(labels=labels.reshape(-1), seed=0)
    return np.round((images + 1) * 127.5).astype(int).reshape(got.shape)
  assert np.abs(got - in_process(0.9)).max() <= 1  # float rounding between programs
  assert np.abs(got - in_process(0.995)).max() > 10


def test_without_config_a_folder_that_holds_no_model_is_one_line(tmp_path):
  result = run_cli("--mode=sample", f"--workdir={tmp_path}", "--config.sample.per_class=2")
  assert result.returncode == 2
  assert "is neither an export" in error_line(result) and "give --config" in error_line(result)


def test_export_and_load_sample_the_same(tmp_path, trained_workdir, monkeypatch):
  from safetensors.numpy import load_file
  folder = loading.export(loading.load(trained_workdir), tmp_path / "export")
  flat = load_file(str(folder / "params.safetensors"))  # no JAX, no Orbax needed
  assert "input_blocks_0_0/kernel" in flat
  from_workdir, from_export = diffusion_jax.load(trained_workdir), diffusion_jax.load(folder)
  assert from_export.step == from_workdir.step == 4 and from_export.ema_rate == 0.995
  assert "16x16 diffusion model of 18 classes" in repr(from_export)
  assert_same_arrays(flat_arrays(from_export.params), flat_arrays(from_workdir.params))
  images = from_export.sample(labels=[0, 5], steps="3")
  assert images.shape == (2, 16, 16, 3) and np.abs(images).max() <= 1
  np.testing.assert_allclose(images, from_workdir.sample(labels=[0, 5], steps="3"), atol=1e-6)
  with pytest.raises(ValueError, match=r"labels \[18\] out of range"):
    from_export.sample(labels=[18])
  with pytest.raises(ValueError, match="are 8x8 but the model takes 16x16"):
    from_export.encode(np.zeros((1, 8, 8, 3), np.uint8), labels=[0])
  _asking_again_does_not_recompile(from_export, monkeypatch)


def _asking_again_does_not_recompile(bundle, monkeypatch):
  """Sampling or encoding again with the same settings reuses the compiled
  program (no new trace of the model); other settings compile anew."""
  traces = []
  apply = ModelSpec.apply
  monkeypatch.setattr(ModelSpec, "apply",
                      lambda *args, **kwargs: (traces.append(1), apply(*args, **kwargs))[1])
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


def test_unknown_arguments_and_settings_are_refused(trained_workdir):
  bundle = loading.load(trained_workdir)
  with pytest.raises(ValueError, match="unknown argument 'stesp'.*takes labels, and the "
                                       "settings method, steps"):
    bundle.sample(labels=[0], stesp="10")
  with pytest.raises(ValueError, match="unknown sample.method 'ddpn'"):
    bundle.sample(labels=[0], method="ddpn")
  with pytest.raises(ValueError, match="2 labels for a batch of 3"):
    bundle.sample(num=3, labels=[0, 1])


def test_a_classifier_loads_and_says_it_draws_nothing(classifier_workdir, trained_workdir):
  bundle = diffusion_jax.load(classifier_workdir)
  assert bundle.kind == "classifier"
  with pytest.raises(ValueError, match="this is a 8x8 noisy classifier of 10 classes, which "
                                       "judges images and draws none"):
    bundle.sample()
  with pytest.raises(ValueError, match="holds a 8x8 noisy classifier of 10 classes, not a "
                                       "diffusion model"):
    diffusion_jax.load(classifier_workdir, kind="diffusion")
  result = run_cli("--mode=sample", "--config=configs/shapes_classifier.py:quick",
                   f"--workdir={classifier_workdir}")
  assert result.returncode == 2
  assert "noisy classifier of 10 classes, not a diffusion model" in error_line(result)


def test_num_samples_writes_one_npz_in_guided_diffusions_layout(tmp_path, trained_workdir):
  def write(name, **overrides):
    config = quick_config(**{**TRAINED_RUN, "mesh.data": -1,  # sharded over all 8 devices
                             "sample.num_samples": 10, "sample.batch_size": 4,
                             "sample.output": str(tmp_path / name), **overrides})
    return sample_mode.run(config, str(trained_workdir))
  path = write("a")
  with np.load(path) as samples:
    assert samples.files == ["arr_0", "arr_1"]
    images, labels = samples["arr_0"], samples["arr_1"]
  assert images.shape == (10, 16, 16, 3) and images.dtype == np.uint8
  assert labels.shape == (10,) and labels.min() >= 0 and labels.max() < 18
  assert len(set(labels.tolist())) > 3  # random classes
  with np.load(write("b")) as again:  # the same seed writes the same file
    np.testing.assert_array_equal(again["arr_0"], images)
    np.testing.assert_array_equal(again["arr_1"], labels)
  with np.load(write("c", **{"sample.labels": (2, 7), "sample.seed": 1})) as chosen:
    np.testing.assert_array_equal(chosen["arr_1"], [2, 7] * 5)
    assert not np.array_equal(chosen["arr_0"], images)
