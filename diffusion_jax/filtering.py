"""Filtering training data with a trained noisy classifier (the safety step).

`classifier_drop_fn(filter_config)` returns a function that flags the
examples the classifier (loaded with `inference.load`: its own config, data
description and weights, so it reads images at its own size) predicts at
t = 0 to be one of the labels to drop with probability above the
threshold. `main` builds it and hands it to training, which knows nothing of
where a filter comes from.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from diffusion_jax.data.info import to_model_image
from diffusion_jax.inference import loading


def load_classifier(filter_config) -> loading.Bundle:
  """The classifier `data.filter.classifier_workdir` names, checked against
  `classifier_drop_labels`."""
  bundle = loading.load(filter_config.classifier_workdir, kind="classifier")
  drop_labels = tuple(filter_config.classifier_drop_labels)
  if not drop_labels:
    raise ValueError("data.filter.classifier_workdir needs classifier_drop_labels")
  if max(drop_labels) >= bundle.spec.num_classes or min(drop_labels) < 0:
    raise ValueError(f"data.filter.classifier_drop_labels {drop_labels} out of range "
                     f"for {bundle.spec.describe()}")
  logging.info("data filter: %s from %s", bundle, filter_config.classifier_workdir)
  return bundle


def classifier_drop_fn(filter_config) -> Optional[Callable[[list], np.ndarray]]:
  """None without `classifier_workdir`; else drop_fn(examples) -> bool [n]."""
  if not filter_config.classifier_workdir:
    return None
  bundle = load_classifier(filter_config)
  size, channels = bundle.info.image_size, bundle.info.channels
  drop_labels = np.asarray(filter_config.classifier_drop_labels, np.int32)

  @jax.jit
  def drop_probability(params, images):  # [n, S, S, C] -> [n]
    t = jnp.zeros((images.shape[0],), jnp.int32)
    probs = jax.nn.softmax(bundle.spec.apply(params, images, t), axis=-1)
    return probs[:, drop_labels].sum(-1)

  def drop_fn(examples):
    images = np.stack([to_model_image(e["image"], size, channels) for e in examples])
    probability = np.asarray(drop_probability(bundle.params, images))
    return probability > filter_config.classifier_threshold
  return drop_fn
