"""`--mode=eval`: samples measured against the test split in the shipped
evaluator's features, bits per dim, and one-line errors."""
import json

import numpy as np
import pytest

from conftest import TRAINED_RUN, quick_config
from diffusion_jax import visualize
from diffusion_jax.data import pipeline
from diffusion_jax.evaluation import eval_mode


def eval_config(tmp_path, **overrides):
  config = quick_config(**TRAINED_RUN, **{"sample.steps": "4", "eval.num_samples": 16,
                                          "eval.kid_subsets": 5, "eval.kid_subset_size": 16,
                                          "eval.output": str(tmp_path / "eval.json"),
                                          **overrides})
  return config


def test_eval_measures_samples_and_real_images_against_themselves(tmp_path, trained_workdir):
  """Samples against a reference .npz (the first 64 test images), with bits
  per dim; then those images against themselves: FD 0, precision and
  recall 1."""
  config = quick_config()
  source, _ = pipeline.load_source(config.data, "test")
  real = np.stack([visualize.to_uint8(pipeline.to_model_image(source[i]["image"], 16, 3))
                   for i in range(64)])
  np.savez(tmp_path / "real.npz", real)
  reference = {"eval.reference": str(tmp_path / "real.npz")}
  path = eval_mode.run(eval_config(tmp_path, **reference, **{"eval.bpd": True,
                                                             "eval.bpd_num": 8}),
                       str(trained_workdir))
  result = json.loads(path.read_text())
  assert result["features"].startswith("evaluator shapes16 (FD in evaluator features")
  assert result["num_samples"] == 16 and result["num_reference"] == 64
  assert result["fd"] > 1 and 0 <= result["precision"] <= 1 and 0 <= result["class_accuracy"] <= 1
  assert np.isfinite(result["bpd"]) and result["bpd"] > 0 and result["bpd_images"] == 8
  # A model of 4 steps draws noise, which the residual-noise measure flags.
  assert result["residual_noise"] == 1.0 and result["residual_noise_threshold"] > 0.1
  assert path.with_suffix(".png").exists()
  copy = eval_config(tmp_path, **reference, **{"eval.samples": str(tmp_path / "real.npz")})
  same = json.loads(eval_mode.run(copy, str(trained_workdir)).read_text())
  # 64 images in 128 dimensions: a singular covariance, whose square root
  # leaves a rounding residue.
  assert abs(same["fd"]) < 1e-3 and same["precision"] == same["recall"] == 1.0
  assert same["residual_noise"] == 0.0


def test_eval_errors_are_one_line(tmp_path, trained_workdir, classifier_workdir):
  few = eval_config(tmp_path, **{"eval.num_samples": 3})
  with pytest.raises(ValueError, match="3 samples are too few for k = 3 nearest neighbours"):
    eval_mode.run(few, str(trained_workdir))
  with pytest.raises(ValueError, match="noisy classifier of 10 classes, not a diffusion model"):
    eval_mode.run(eval_config(tmp_path), str(classifier_workdir))
  with pytest.raises(ValueError, match="eval.features=inception needs eval.inception"):
    eval_mode.run(eval_config(tmp_path, **{"eval.features": "inception"}),
                  str(trained_workdir))
  fake = tmp_path / "random.safetensors"  # weights the converter did not write
  from diffusion_jax.evaluation import inception_weights
  inception_weights.save({"fc_bias": np.zeros(3)}, fake, digest="0123abcd")
  with pytest.raises(ValueError, match="was not converted from the standard FID weights"):
    eval_mode.run(eval_config(tmp_path, **{"eval.features": "inception",
                                           "eval.inception": str(fake)}), str(trained_workdir))

