"""Classifier guidance end to end: a trained noisy classifier guides a trained
model through `Bundle.sample` and the CLI exactly as `sampling.sample` with
`guidance.classifier` wired by hand, at the original timesteps, for a
class-conditional and an unconditional model; mismatched classifiers are
refused, naming the difference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ONE_DEVICE, QUICK, TINY_MODEL, error_line, quick_config, run_cli
from diffusion_jax import guidance, sampling, schedules
from diffusion_jax.data.pipeline import DatasetInfo
from diffusion_jax.inference import guide as guide_lib
from diffusion_jax.inference import loading
from diffusion_jax.inference.spec import ModelSpec, make_spec

LABELS = np.array([0, 5, 11], np.int32)


@pytest.fixture(scope="module")
def classifier_16(tmp_path_factory):
  """A quick noisy classifier of 16x16 shapes: the schedule, labels and size
  of the shared quick model."""
  from diffusion_jax.training import loop
  workdir = tmp_path_factory.mktemp("shapes_classifier")
  loop.train_and_evaluate(quick_config("shapes_classifier", **ONE_DEVICE, **TINY_MODEL),
                          str(workdir))
  return loading.load(workdir)


@pytest.fixture(scope="module")
def unconditional(tmp_path_factory):
  """A quick unconditional model of 16x16 shapes."""
  from diffusion_jax.training import loop
  workdir = tmp_path_factory.mktemp("uncond")
  config = quick_config(**ONE_DEVICE, **TINY_MODEL, **{"model.class_conditional": False,
                                                         "train.label_dropout": 0.0})
  loop.train_and_evaluate(config, str(workdir))
  return loading.load(workdir)


def hand_wired(bundle, classifier, scale, labels, seed, method, guidance_scale=1.0):
  """`sampling.sample` with `guidance.classifier` (and CFG) wired by hand."""
  spec, sample = bundle.spec, bundle.config.sample
  conditional = bool(spec.num_classes)

  def model_fn(x, t, y):
    return spec.apply(bundle.params, x, t, **({"y": y} if conditional else {}))
  if guidance_scale != 1.0:
    model_fn = guidance.classifier_free(model_fn, guidance_scale, {"y": spec.num_classes})

  def logits_fn(x, t):
    return classifier.spec.apply(classifier.params, x, t)
  cond_fn = guidance.classifier(guidance.log_prob_from_logits(logits_fn), scale)
  fast = schedules.respace(spec.schedule, sample.steps)
  return np.asarray(sampling.sample(
      model_fn, fast, (len(labels), 16, 16, 3), jax.random.PRNGKey(seed), method=method,
      clip_denoised=sample.clip_denoised, parameterization=spec.parameterization,
      variance=spec.variance, cond_fn=cond_fn, y=jnp.asarray(labels)))


@pytest.fixture(scope="module")
def guided_conditional(trained_workdir, classifier_16):
  """The shared quick model guided by the 16x16 classifier (s = 3) and CFG
  (s = 2), DDPM, seed 1: through Bundle.sample."""
  bundle = loading.load(trained_workdir)
  images = bundle.sample(labels=LABELS, classifier=classifier_16, classifier_scale=3.0,
                         method="ddpm", guidance_scale=2.0, seed=1)
  return bundle, images


def test_bundle_guidance_of_a_conditional_model_equals_hand_wiring(guided_conditional,
                                                                  classifier_16, monkeypatch):
  bundle, images = guided_conditional
  want = hand_wired(bundle, classifier_16, 3.0, LABELS, 1, "ddpm", guidance_scale=2.0)
  np.testing.assert_allclose(images, want, atol=2e-4)  # float noise, amplified by s
  unguided = bundle.sample(labels=LABELS, method="ddpm", guidance_scale=2.0, seed=1)
  assert np.abs(images - unguided).max() > 1e-2  # the classifier really steers
  # The scale is an argument of the compiled program: s = 0 runs it again
  # without a new trace, and is the unguided sampler.
  traces = []
  apply = ModelSpec.apply
  monkeypatch.setattr(ModelSpec, "apply",
                      lambda *args, **kwargs: (traces.append(1), apply(*args, **kwargs))[1])
  zero = bundle.sample(labels=LABELS, classifier=classifier_16, classifier_scale=0.0,
                       method="ddpm", guidance_scale=2.0, seed=1)
  assert not traces
  np.testing.assert_allclose(zero, unguided, atol=2e-5)


def test_unconditional_guidance_at_the_original_timesteps(unconditional, classifier_16,
                                                          monkeypatch):
  """DDIM (score shift) on an unconditional model; under respaced sampling
  the classifier sees the original timesteps, never the respaced indices."""
  seen = []
  apply = ModelSpec.apply

  def spying(self, params, x, t, **kwargs):
    if self.kind == "classifier":
      jax.debug.callback(lambda t: seen.append(np.asarray(t).tolist()), t)
    return apply(self, params, x, t, **kwargs)
  monkeypatch.setattr(ModelSpec, "apply", spying)
  labels = np.array([2, 7], np.int32)
  images = unconditional.sample(labels=labels, classifier=classifier_16,
                                classifier_scale=5.0, method="ddim", seed=2)
  monkeypatch.setattr(ModelSpec, "apply", apply)
  fast = schedules.respace(unconditional.schedule, unconditional.config.sample.steps)
  assert {t for batch in seen for t in batch} == set(np.asarray(fast.timesteps).tolist())
  assert sorted(set(np.asarray(fast.timesteps).tolist())) != list(range(fast.num_timesteps))
  want = hand_wired(unconditional, classifier_16, 5.0, labels, 2, "ddim")
  np.testing.assert_allclose(images, want, atol=2e-4)  # float noise, amplified by s
  with pytest.raises(ValueError, match="unknown argument .labels.: a 16x16 diffusion model "
                                       "takes no conditioning"):
    unconditional.sample(labels=labels)  # labels mean something only to a classifier


def test_cli_classifier_guidance_samples_what_bundle_does(tmp_path, trained_workdir,
                                                          classifier_16, guided_conditional):
  export = loading.export(classifier_16, tmp_path / "classifier")
  result = run_cli("--mode=sample", QUICK, f"--workdir={trained_workdir}",
                   f"--config.sample.classifier={export}", "--config.sample.classifier_scale=3",
                   "--config.sample.guidance_scale=2", "--config.sample.method=ddpm",
                   "--config.sample.labels=0,5,11", "--config.sample.per_class=1",
                   "--config.sample.seed=1", f"--config.sample.output={tmp_path}/grid")
  assert result.returncode == 0, result.stderr[-3000:]
  with np.load(tmp_path / "grid.npz") as grid:
    got = grid["images"][:, 0].astype(int)
    np.testing.assert_array_equal(grid["labels"][:, 0], LABELS)
  want = np.round((guided_conditional[1] + 1) * 127.5).astype(int)
  assert np.abs(got - want).max() <= 1  # float rounding between the two programs


SHAPES_16 = DatasetInfo(16, 3, 18, 100)


def _bundle(name="shapes_class_cond", info=SHAPES_16, **overrides):
  """A Bundle (no weights) of a quick config for data `info`."""
  config = quick_config(name, **overrides)
  return loading.Bundle(config, None, make_spec(config, info), info, 0, 0.995)


@pytest.mark.parametrize("overrides,info,message", [
    ({"diffusion.num_timesteps": 200}, None,
     "it was trained with 200 timesteps, the model with 100"),
    ({"diffusion.schedule": "linear"}, None,
     "it was trained with the 'linear' noise schedule, the model with the 'cosine'"),
    ({"diffusion.zero_terminal_snr": True, "diffusion.parameterization": "v"}, None,
     "it was trained with the 'cosine' rescaled to zero terminal SNR noise schedule, "
     "the model with the 'cosine'"),
    ({"data.name": "digits/16"}, DatasetInfo(16, 1, 10, 100),
     "its labels are the 10 classes of 'digits/16', the model's the 18 of "
     "'shapes/one_object_16'"),
    ({"data.image_size": 8}, DatasetInfo(8, 3, 18, 100),
     "it takes 8x8x3 images, the model draws 16x16x3"),
])
def test_a_classifier_of_another_schedule_label_set_or_size_is_refused(overrides, info,
                                                                       message):
  model = _bundle()
  classifier = _bundle("shapes_classifier", info or model.info, **overrides)
  with pytest.raises(ValueError, match="the classifier cannot guide a 16x16 diffusion model"):
    guide_lib.make_guide(model, classifier, 1.0)
  assert guide_lib.difference(model, classifier) == message
  assert guide_lib.difference(model, _bundle("shapes_classifier")) is None
  with pytest.raises(ValueError, match="needs a noisy classifier, not a 16x16 diffusion"):
    guide_lib.make_guide(model, model, 1.0)


def test_the_cli_refuses_a_mismatched_classifier_in_one_line(trained_workdir,
                                                             classifier_workdir):
  result = run_cli("--mode=sample", QUICK, f"--workdir={trained_workdir}",
                   f"--config.sample.classifier={classifier_workdir}")
  assert result.returncode == 2
  assert "its labels are the 10 classes of 'digits/16'" in error_line(result)


def test_eval_mode_draws_with_the_guiding_classifier_it_is_given(trained_workdir, classifier_16,
                                                                 tmp_path):
  """`--mode=eval` with sample.classifier samples guided (it used to ignore
  the classifier): the same seed and labels at scale 0 and 10 draw other
  images, and at scale 0 exactly the unguided model's."""
  from diffusion_jax.evaluation import eval_mode
  bundle = loading.load(trained_workdir)
  config = bundle.config
  config.update_from_flattened_dict({
      "eval.num_samples": 4, "sample.labels": (3,), "sample.batch_size": 4,
      "sample.classifier": str(loading.export(classifier_16, tmp_path / "classifier"))})
  drawn = {}
  for scale in (0.0, 10.0):
    config.sample.classifier_scale = scale
    drawn[scale], labels = eval_mode._draw(bundle, config, str(tmp_path))
  np.testing.assert_array_equal(labels, 3)
  assert not np.array_equal(drawn[0.0], drawn[10.0])  # the gradient moved them
  config.sample.classifier = ""
  unguided, _ = eval_mode._draw(bundle, config, str(tmp_path))
  np.testing.assert_array_equal(unguided, drawn[0.0])


def test_a_classifier_named_by_path_is_loaded_and_compiled_once(trained_workdir, classifier_16,
                                                               tmp_path):
  """Each load of a guide is a new program to compile: a path given again
  (another scale included) reuses the first load and its compiled sampler."""
  path = str(loading.export(classifier_16, tmp_path / "classifier"))
  bundle = loading.load(trained_workdir)
  first = bundle.sample(labels=[1, 2], classifier=path, classifier_scale=1.0, seed=0)
  again = bundle.sample(labels=[1, 2], classifier=path, classifier_scale=1.0, seed=0)
  bundle.sample(labels=[1, 2], classifier=path, classifier_scale=5.0, seed=0)
  np.testing.assert_array_equal(first, again)
  assert len(bundle.sampler._compiled) == 1 and len(bundle._guiding) == 1
