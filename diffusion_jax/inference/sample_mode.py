"""`--mode=sample`: a trained model's samples as files.

With `sample.num_samples = N`, N samples in one `.npz` of guided-diffusion's
layout, drawn `sample.batch_size` at a time over all devices (of all
processes) with a progress bar; otherwise a PNG grid with one row per class
(or per `sample.labels`) and its `.npz`. The model comes from the workdir's
latest checkpoint (or an export folder), with the weights `sample.ema_rate`
names (`sample.use_ema=False`: the raw parameters); the rest of the config's
`sample` section says how to sample, and `sample.classifier` names a trained
noisy classifier that guides the samples towards their labels (scale
`sample.classifier_scale`).

A text-to-image model draws one row (or, with N > 0, every sample in turn)
per prompt of `sample.prompts` ("a red circle|a blue square");
`sample.prompts_after` and `sample.switch_at` make a prompt schedule, and
`sample.clip` names a noised CLIP that guides towards the prompts (scale
`sample.clip_scale`).
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Optional

import jax
from absl import logging

from diffusion_jax import parallel
from diffusion_jax.data import builders
from diffusion_jax.inference import edit_mode, loading, outputs
from diffusion_jax.inference import guide as guide_lib
from diffusion_jax.inference.sampler import Sampler, SampleSettings
from diffusion_jax.inference.spec import ModelSpec


def check_sample_config(sample_config, spec: ModelSpec,
                        label_classes: Optional[int] = None) -> SampleSettings:
  """The sample settings, checked against the model before any work.

  `label_classes`: the classes `sample.labels` index (default: the model's;
  a guiding classifier's for an unconditional model)."""
  settings = SampleSettings.of(sample_config)
  settings.check(spec)
  if sample_config.labels:
    outputs.grid_labels(label_classes or spec.num_classes, 1, list(sample_config.labels))
  prompts = outputs.grid_layout(spec, sample_config, label_classes)[1]
  if prompts is None and outputs.split_prompts(sample_config.get("prompts", "")):
    raise ValueError(f"sample.prompts is set, but {spec.describe()} takes no prompts")
  after = outputs.split_prompts(sample_config.get("prompts_after", ""))
  if after is not None:
    spec.prepare_after(after, len(after))
    if len(after) != len(prompts):
      raise ValueError(f"sample.prompts_after has {len(after)} prompts, sample.prompts "
                       f"{len(prompts)}: give one later prompt per prompt")
  if sample_config.num_samples < 0 or sample_config.batch_size < 1:
    raise ValueError("sample.num_samples must be >= 0 and sample.batch_size >= 1")
  return settings


def row_titles(data_config, num_classes, labels_grid, image_size: int):
  """The grid's row titles: each row's class name, or None without classes."""
  if not num_classes:
    return None
  try:
    return builders.label_names(data_config.name, labels_grid[:, 0],
                                data_config.data_dir or None, image_size=image_size)
  except ValueError:  # the data is not here (a converted ImageNet model): numbers
    return [f"class {int(label)}" for label in labels_grid[:, 0]]


@dataclasses.dataclass
class _Request:
  """What sample mode draws with: the model, its weights on the mesh, the
  sampler, the settings, and the classifier or CLIP guide (None without one)."""
  bundle: loading.Bundle
  params: Any
  sampler: Sampler
  settings: SampleSettings
  guide: Any

  @property
  def label_classes(self) -> Optional[int]:
    return label_classes(self.bundle.spec, self.guide)


def label_classes(spec: ModelSpec, guide) -> Optional[int]:
  """The classes labels index: the model's, or else a classifier guide's."""
  if spec.num_classes:
    return spec.num_classes
  if isinstance(guide, guide_lib.ClassifierGuide):
    return guide.spec.num_classes
  return None


def guide_of(sample_config, bundle, mesh=None):
  """`sample.classifier` or `sample.clip` as a checked guide, its weights on
  the mesh; None without either."""
  clip_path = sample_config.get("clip", "")
  if sample_config.classifier and clip_path:
    raise ValueError("set sample.classifier or sample.clip, not both")
  guide = bundle._guide(sample_config.classifier or None, sample_config.classifier_scale,
                        clip_path or None, sample_config.clip_scale)
  if guide is None:
    return None
  logging.info("guidance by %s at scale %g", sample_config.classifier or clip_path,
               guide.scale)
  if mesh is None:
    return guide
  return dataclasses.replace(guide, params=parallel.replicate(guide.params, mesh))


def run(config, workdir: str, mesh=None, model: Optional[str] = None) -> pathlib.Path:
  """Writes the samples `config.sample` asks for from `model` (default: the
  one in `workdir`; a shipped model's name, an export or a workdir) under
  `workdir`, on `mesh` (default: the config's mesh, all devices); returns the
  file written. An edit (an image in, or a cascade) goes to `edit_mode`."""
  if edit_mode.requested(config.sample):
    return edit_mode.run(config, workdir, model)
  bundle = loading.load(model or workdir, loading.ema_choice(config.sample),
                        kind="diffusion")
  mesh = mesh if mesh is not None else parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
  guide = guide_of(config.sample, bundle, mesh)
  request = _Request(bundle, None, Sampler(bundle.spec, mesh), None, guide)
  request.settings = check_sample_config(config.sample, bundle.spec, request.label_classes)
  request.params = parallel.replicate(bundle.params, mesh)  # once, not per batch
  settings = request.settings
  logging.info("sampling %s with %s", bundle, settings)
  if config.sample.num_samples:
    return _write_many(config.sample, request, workdir)
  return _write_grid(config.sample, request, workdir)


def _write_many(sample_config, request: _Request, workdir) -> pathlib.Path:
  num = int(sample_config.num_samples)
  spec = request.bundle.spec
  labels = outputs.many_labels(request.label_classes, num, sample_config.seed,
                               list(sample_config.labels))
  prompts = outputs.grid_layout(spec, sample_config, request.label_classes)[1]
  after = outputs.split_prompts(sample_config.get("prompts_after", ""))
  images = outputs.sample_many(request.sampler, request.params, request.settings, num,
                               int(sample_config.batch_size), sample_config.seed, labels,
                               guide=request.guide, prompts=outputs.many_prompts(prompts, num),
                               prompts_after=outputs.many_prompts(after, num))
  shape = "x".join(str(s) for s in images.shape)
  path = pathlib.Path(sample_config.output or
                      pathlib.Path(workdir) / "samples" / f"samples_{shape}.npz")
  if jax.process_index() == 0:
    outputs.write_npz(images, labels, path.with_suffix(".npz"))
  return path.with_suffix(".npz")


def _write_grid(sample_config, request: _Request, workdir) -> pathlib.Path:
  bundle = request.bundle
  labels, prompts = outputs.grid_layout(bundle.spec, sample_config, request.label_classes)
  after = outputs.split_prompts(sample_config.get("prompts_after", ""))
  images = outputs.sample_grid(request.sampler, request.params, request.settings,
                               sample_config.seed, labels, request.guide, prompts, after)
  path = pathlib.Path(sample_config.output or
                      pathlib.Path(workdir) / "samples" / f"sampled_{bundle.step:06d}")
  if jax.process_index() != 0:
    return path.with_suffix(".png")
  titles = prompts or row_titles(bundle.config.data, request.label_classes, labels,
                                 bundle.info.image_size)
  if prompts and after:
    titles = [f"{p} -> {a}" for p, a in zip(prompts, after)]
  return outputs.write_grid(images, labels, path, titles, prompts)
