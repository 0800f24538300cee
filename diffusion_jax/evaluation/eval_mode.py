"""`--mode=eval`: a trained model's samples measured against real images.

Draws `eval.num_samples` samples from the workdir's (or export's) weights
with the config's sampler, guidance and labels (`sample.*`, including a
guiding `sample.classifier` or `sample.clip`), or reads them
from `eval.samples` (a samples `.npz`, `arr_0`), then measures them against
the dataset's test split, or `eval.reference` (an `.npz` in guided-diffusion's
batch layout, `arr_0` uint8 [N, H, W, C]):

- FD (Frechet distance), KID with its standard error, precision and recall
  (k = `eval.k`), in the features `eval.features` names: "evaluator" (the
  shipped clean-image evaluator of the dataset, or `eval.evaluator`: report
  "FD in evaluator features", not FID) or "inception" (pytorch-fid's
  network with the weights `eval.inception` names: FID);
- with the shipped evaluator and labels, class accuracy as it sees it;
- with `eval.bpd`, bits per dimension on `eval.bpd_num` test images.

Writes `WORKDIR/eval/eval_<step>.json` (or `eval.output`) and a grid of the
first samples beside it.
"""
from __future__ import annotations

import json
import pathlib
import time
from typing import Callable, Optional

import jax
import numpy as np
import tqdm
from absl import logging

from diffusion_jax import likelihood, parallel, validation, visualize
from diffusion_jax.data import pipeline
from diffusion_jax.evaluation import distances, inception_weights, metrics
from diffusion_jax.evaluation import evaluator as evaluator_lib
from diffusion_jax.inference import loading, outputs, sample_mode
from diffusion_jax.inference.sampler import Sampler
from diffusion_jax.models import inception

FEATURE_KINDS = ("evaluator", "inception")


def shipped_evaluator_for(data_name: str) -> str:
  """The shipped evaluator trained on `data_name`, by its config.

  Raises:
    ValueError: none was; name one with eval.evaluator.
  """
  for name in evaluator_lib.evaluator_names():
    config = json.loads((evaluator_lib.WEIGHTS / name / loading.CONFIG_FILE).read_text())
    if config["data"]["name"] == data_name:
      return name
  raise ValueError(f"no shipped evaluator was trained on {data_name!r}; set eval.evaluator "
                   "to an evaluator's export or workdir, or eval.features=inception")


class FeatureNet:
  """Features of image batches, sharded over the mesh's devices: `name`,
  `dim` and `__call__(images uint8 [B, S, S, C]) -> [B, dim]`.

  `apply(params, x)` maps prepared float images to features; `prepare` maps
  uint8 images to its input (host side)."""

  def __init__(self, name: str, dim: int, apply: Callable, params, prepare: Callable,
               mesh=None):
    self.name, self.dim, self._prepare = name, dim, prepare
    self._mesh = mesh if mesh is not None else parallel.make_mesh()
    self._params = parallel.replicate(params, self._mesh)
    self._apply = jax.jit(apply, out_shardings=parallel.replicated(self._mesh))

  def __call__(self, images) -> np.ndarray:
    x = np.asarray(self._prepare(images), np.float32)
    devices = self._mesh.devices.size
    padded = -(-len(x) // devices) * devices
    x = np.concatenate([x, np.repeat(x[-1:], padded - len(x), 0)]) if padded > len(x) else x
    placed = jax.device_put(x, parallel.batch_sharding(self._mesh))
    return np.asarray(self._apply(self._params, placed))[:len(images)]


def feature_net(eval_config, data_name: str, mesh=None
                ) -> tuple[FeatureNet, Optional[loading.Bundle]]:
  """(the features eval.features names, the evaluator when it is one)."""
  kind = eval_config.features
  if kind not in FEATURE_KINDS:
    raise ValueError(f"eval.features {kind!r}: choose one of {list(FEATURE_KINDS)}")
  if kind == "inception":
    if not eval_config.inception:
      raise ValueError("eval.features=inception needs eval.inception: the converted FID "
                       "weights (python -m diffusion_jax.evaluation.inception_weights)")
    params = inception_weights.load(eval_config.inception)
    return FeatureNet("Inception pool3 (FID)", 2048,
                      lambda p, x: inception.fid_outputs(p, x)["pool3"], params,
                      lambda images: validation.check_images(images) * 0.5 + 0.5, mesh), None
  name = eval_config.evaluator or shipped_evaluator_for(data_name)
  evaluator = evaluator_lib.load_evaluator(name)
  spec = evaluator.spec
  size, channels = evaluator.info.image_size, evaluator.info.channels
  return FeatureNet(f"evaluator {name} (FD in evaluator features, not FID)",
                    spec.model.feature_dim,
                    lambda p, x: spec.apply(p, x, None)[evaluator_lib.FEATURES],
                    evaluator.params,
                    lambda images: validation.check_images(images, image_size=size,
                                                           channels=channels),
                    mesh), evaluator


def reference_images(config, eval_config) -> np.ndarray:
  """uint8 [N, S, S, C]: eval.reference's arr_0, or the test split."""
  if eval_config.reference:
    with np.load(eval_config.reference, allow_pickle=False) as data:
      if "arr_0" not in data:
        raise ValueError(f"{eval_config.reference} has no arr_0 (guided-diffusion's batch "
                         "layout: uint8 images [N, H, W, C])")
      return data["arr_0"]
  return visualize.to_uint8(pipeline.split_examples(config.data, "test")[0])


def _draw(bundle, config, workdir) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """(uint8 samples [N, S, S, C], their labels or None)."""
  eval_config, sample = config.eval, config.sample
  if eval_config.samples:
    with np.load(eval_config.samples, allow_pickle=False) as data:
      return data["arr_0"], (data["arr_1"] if "arr_1" in data else None)  # noqa: SIM401
  sampler = Sampler(bundle.spec)
  guide = sample_mode.guide_of(sample, bundle)  # sample.classifier or sample.clip, or None
  classes = sample_mode.label_classes(bundle.spec, guide)
  settings = sample_mode.check_sample_config(sample, bundle.spec, classes)
  labels = outputs.many_labels(classes, eval_config.num_samples, sample.seed,
                               list(sample.labels))
  prompts = outputs.grid_layout(bundle.spec, sample, classes)[1]
  images = outputs.sample_many(sampler, bundle.params, settings, eval_config.num_samples,
                               int(sample.batch_size), sample.seed, labels, guide=guide,
                               prompts=outputs.many_prompts(prompts, eval_config.num_samples))
  return images, labels


def _features(net: FeatureNet, images: np.ndarray, batch: int, what: str) -> np.ndarray:
  parts = []
  for start in tqdm.trange(0, len(images), batch, desc=f"features of {what}", unit="batch"):
    parts.append(net(images[start:start + batch]))
  return np.concatenate(parts)


def measure(real_features, fake_features, eval_config) -> dict:
  """FD, KID (and its standard error), precision and recall."""
  k = int(eval_config.k)
  for name, feats in (("samples", fake_features), ("reference images", real_features)):
    if len(feats) <= k:
      raise ValueError(f"{len(feats)} {name} are too few for k = {k} nearest neighbours "
                       f"(eval.k): give more than {k}")
  kid, kid_se = distances.kernel_inception_distance(
      real_features, fake_features, eval_config.kid_subsets, eval_config.kid_subset_size)
  precision, recall = distances.precision_recall(real_features, fake_features, k)
  fd = distances.frechet_distance(distances.FeatureStats.of(real_features),
                                  distances.FeatureStats.of(fake_features))
  return {"fd": round(fd, 4), "kid": round(kid, 6), "kid_se": round(kid_se, 6),
          "precision": round(precision, 4), "recall": round(recall, 4)}


def bits_per_dim(bundle, config, num: int, seed: int) -> dict:
  """The bound on `num` test images (`likelihood.bits_per_dim`), mean and SE."""
  x0, examples = pipeline.split_examples(config.data, "test", num)
  cond = {}
  if bundle.spec.num_classes:
    cond = bundle.spec.prepare_cond({"labels": [int(e["label"]) for e in examples]}, len(x0))
  spec = bundle.spec
  model_fn = lambda x, t, **c: spec.apply(bundle.params, x, t, **c)  # noqa: E731
  totals = []
  for start in tqdm.trange(0, len(x0), 64, desc="bits per dim", unit="batch"):
    part = {k: v[start:start + 64] for k, v in cond.items()}
    out = likelihood.bits_per_dim(model_fn, spec.schedule, x0[start:start + 64],
                                  jax.random.fold_in(jax.random.PRNGKey(seed), start),
                                  parameterization=spec.parameterization,
                                  variance=spec.variance, **part)
    totals.append(np.asarray(out["total"]))
  total = np.concatenate(totals)
  return {"bpd": round(float(total.mean()), 4),
          "bpd_se": round(float(total.std(ddof=1) / np.sqrt(len(total))), 4),
          "bpd_images": len(total)}


def run(config, workdir: str, model: Optional[str] = None) -> pathlib.Path:
  """Measures `model` (default: the one in `workdir`; a shipped model's name,
  an export or a workdir) as `config.eval` says; writes under `workdir` and
  returns the JSON written."""
  eval_config = config.eval
  bundle = loading.load(model or workdir, loading.ema_choice(config.sample),
                        kind="diffusion")
  start = time.perf_counter()
  net, evaluator = feature_net(eval_config, config.data.name)
  images, labels = _draw(bundle, config, workdir)
  reference = reference_images(config, eval_config)
  batch = int(config.sample.batch_size)
  result = {"model": repr(bundle), "features": net.name, "num_samples": len(images),
            "num_reference": len(reference),
            "reference": eval_config.reference or f"{config.data.name} test split",
            "sampler": {k: config.sample[k] for k in ("method", "steps", "eta",
                                                      "guidance_scale")}}
  for guide in ("classifier", "clip"):
    if config.sample.get(guide, ""):
      result["sampler"].update({guide: config.sample[guide],
                                f"{guide}_scale": config.sample[f"{guide}_scale"]})
  fake = _features(net, images, batch, "samples")
  real = _features(net, reference, batch, "reference")
  result.update(measure(real, fake, eval_config))
  # Residual noise: samples rougher than twice the roughest reference image.
  threshold = metrics.threshold_of(reference)
  result["residual_noise"] = metrics.residual_noise_fraction(images, threshold)
  result["residual_noise_threshold"] = round(threshold, 4)
  if evaluator is not None and labels is not None and bundle.spec.num_classes:
    judged = metrics.judge(evaluator, images, np.asarray(labels))
    result["class_accuracy"] = round(float(judged["accuracy"]), 4)
  if eval_config.bpd:
    result.update(bits_per_dim(bundle, config, int(eval_config.bpd_num), config.sample.seed))
  result["seconds"] = round(time.perf_counter() - start, 1)
  path = pathlib.Path(eval_config.output or
                      pathlib.Path(workdir) / "eval" / f"eval_{bundle.step:06d}.json")
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    shown = images[:64]
    columns = min(8, len(shown))
    rows = len(shown) // columns
    visualize.image_grid(shown[:rows * columns].reshape((rows, columns) + shown.shape[1:])
                         ).save(path.with_suffix(".png"))
  logging.info("eval: %s", result)
  return path
