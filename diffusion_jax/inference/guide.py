"""Classifier guidance from a trained noisy classifier (ADM's classifier_sample.py).

A `ClassifierGuide` is a trained classifier and a scale s; the sampler adds
s * grad_x log p(y | x_t, t) of the wanted labels y, by `jax.grad`, as the
mean shift of ancestral sampling or the score shift of DDIM
(`sampling.py`). Its parameters and scale are arguments of the compiled
sampler, so another scale or newer weights do not recompile.

A classifier guides only the model it was trained for: the same noise
schedule and number of timesteps (it must judge x_t at the noise level the
sampler is at), the same label set, the same image size and channels.
`check_compatible` names the first difference.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from diffusion_jax import guidance
from diffusion_jax.inference import conditioning as cond_lib
from diffusion_jax.inference.spec import ModelSpec
from diffusion_jax.models import clip as clip_lib


@dataclasses.dataclass(frozen=True, eq=False)
class ClassifierGuide:
  """A trained noisy classifier and its guidance scale s.

  Attributes:
    spec: the classifier's `ModelSpec`.
    params: its weights.
    scale: s in s * grad log p(y | x_t); 0 leaves the samples unguided.
    target: the labels it is asked for, a conditioning input ("labels" -> y).
  """
  spec: ModelSpec
  params: Any
  scale: float

  @property
  def target(self) -> cond_lib.ClassLabel:
    return cond_lib.ClassLabel(self.spec.num_classes)

  def cond_fn(self, params, scale):
    """The `cond_fn(x_t, t, y=...)` of `params` and `scale` (traced or not)."""
    def logits_fn(x, t):
      return self.spec.apply(params, x, t)
    return guidance.classifier(guidance.log_prob_from_logits(logits_fn), scale)

  def encode_cond(self, params, cond):
    """The sampler's conditioning as the cond_fn reads it (the labels as given)."""
    del params
    return cond


@dataclasses.dataclass(frozen=True, eq=False)
class ClipGuide:
  """A trained noised CLIP and its guidance scale (GLIDE's CLIP guidance).

  Attributes:
    spec: the CLIP's `ModelSpec` (kind "clip").
    params: its weights ({"image": ..., "text": ...}).
    scale: the guidance scale; 0 leaves the samples unguided.
  """
  spec: ModelSpec
  params: Any
  scale: float

  @property
  def target(self) -> cond_lib.ClipCaption:
    """The prompts, as CLIP tokens."""
    return cond_lib.ClipCaption(self.spec.model.spec.text_ctx)

  def encode_cond(self, params, cond):
    """Adds the prompts' normalised text embeddings ("clip_text" [B, D]),
    computed once per sample call."""
    out = dict(cond)
    out["clip_text"] = clip_lib.text_embeddings(self.spec.model.spec, params,
                                                cond["clip_tokens"], cond["clip_lens"])
    return out

  def cond_fn(self, params, scale):
    """scale * grad_x exp(logit_scale) <z_image(x_t, t), clip_text>."""
    def image_embed_fn(x, t):
      return clip_lib.image_embeddings(self.spec.model.spec, params, x, t)
    return guidance.clip(image_embed_fn, scale, clip_lib.LOGIT_SCALE)


def _family(data_name: str) -> str:
  """The dataset a data name belongs to ("shapes/one_object_16" -> "shapes")."""
  return data_name.partition("/")[0].partition(":")[0]


def _noise_difference(model, guide) -> Optional[str]:
  """How `guide`'s noise levels differ from `model`'s, or None."""
  got, want = guide.spec.schedule, model.spec.schedule
  if got.num_timesteps != want.num_timesteps:
    return (f"it was trained with {got.num_timesteps} timesteps, the model with "
            f"{want.num_timesteps}")
  if not np.allclose(np.asarray(got.alphas_cumprod), np.asarray(want.alphas_cumprod),
                     rtol=1e-5, atol=1e-7):
    return (f"it was trained with the {_schedule_name(guide.config)} noise "
            f"schedule, the model with the {_schedule_name(model.config)}")
  return None


def _schedule_name(config) -> str:
  """"'cosine'", or "'linear' rescaled to zero terminal SNR"."""
  name = repr(config.diffusion.schedule)
  if config.diffusion.get("zero_terminal_snr", False):
    name += " rescaled to zero terminal SNR"
  return name


def _shape_difference(model, guide) -> Optional[str]:
  if tuple(guide.spec.image_shape) != tuple(model.spec.image_shape):
    size = lambda shape: "x".join(str(s) for s in shape)  # noqa: E731
    return (f"it takes {size(guide.spec.image_shape)} images, the model draws "
            f"{size(model.spec.image_shape)}")
  return None


def difference(model, classifier) -> Optional[str]:
  """The first way `classifier` cannot guide `model` (both loaded `Bundle`s:
  spec, config, info), as a phrase, or None."""
  noise = _noise_difference(model, classifier)
  if noise:
    return noise
  model_data, classifier_data = model.config.data.name, classifier.config.data.name
  if (_family(model_data) != _family(classifier_data)
      or classifier.spec.num_classes != model.info.num_classes):
    return (f"its labels are the {classifier.spec.num_classes} classes of "
            f"{classifier_data!r}, the model's the {model.info.num_classes} of {model_data!r}")
  return _shape_difference(model, classifier)


def check_compatible(model, classifier) -> None:
  """Raises a one-line ValueError when `classifier` cannot guide `model`."""
  problem = difference(model, classifier)
  if problem is not None:
    raise ValueError(f"the classifier cannot guide {model.spec.describe()}: {problem}")


def make_guide(model, classifier, scale: float) -> ClassifierGuide:
  """A checked `ClassifierGuide` of `classifier` (a loaded classifier `Bundle`)
  for `model` (a loaded diffusion `Bundle`)."""
  if classifier.kind != "classifier":
    raise ValueError(f"classifier guidance needs a noisy classifier, not "
                     f"{classifier.spec.describe()}")
  check_compatible(model, classifier)
  if scale < 0:
    raise ValueError(f"classifier_scale must be >= 0, got {scale}")
  return ClassifierGuide(classifier.spec, classifier.params, float(scale))


def make_clip_guide(model, clip, scale: float) -> ClipGuide:
  """A checked `ClipGuide` of `clip` (a loaded noised-CLIP `Bundle`) for
  `model` (a loaded text-to-image `Bundle`): the same noise schedule and
  image size, or a one-line ValueError naming the difference."""
  if clip.kind != "clip":
    raise ValueError(f"CLIP guidance needs a noised CLIP, not {clip.spec.describe()}")
  problem = _noise_difference(model, clip) or _shape_difference(model, clip)
  if problem is not None:
    raise ValueError(f"the CLIP cannot guide {model.spec.describe()}: {problem}")
  if scale < 0:
    raise ValueError(f"clip_scale must be >= 0, got {scale}")
  return ClipGuide(clip.spec, clip.params, float(scale))
