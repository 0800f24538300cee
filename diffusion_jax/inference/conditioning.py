"""What a model is conditioned on: one declaration per conditioning input.

A model kind lists its inputs (`spec.ModelSpec.conditioning`); training,
initialisation, sampling, `Bundle` and the CLI read the list and special-case
nothing. Each input says:

- `arg`: the name users give it (`bundle.sample(labels=...)`, `sample.labels`);
- `keys`: the model's keyword arguments it supplies (the UNet's `y`);
- `from_example`: how a dataset example makes it (on the host, in the pipeline);
- `placeholder`: dummy values for initialising the network;
- `null`: its null value, for condition dropout in training and for
  classifier-free guidance, or None when the model has none;
- `drop`: condition dropout inside the (traced) train step;
- `prepare`: validation of what a user passes, as model-ready arrays;
- `default`: values for a batch when the user passes none.

Text will add a caption (tokens and mask), inpainting a mask and known
image, upsampling a low-resolution image: each is a new class here and one
line in `spec.py`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import validation

Arrays = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class ClassLabel:
  """A class label, embedded by the network (guided-diffusion's `y`).

  Attributes:
    num_classes: the classes of the data, 0 to num_classes - 1.
    null_label: the extra "no class" row of the embedding, for
      classifier-free guidance (None when trained without label dropout).
  """
  num_classes: int
  null_label: Optional[int] = None
  arg: str = "labels"
  keys: tuple = ("y",)

  def from_example(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {"y": np.int32(example["label"])}

  def placeholder(self, batch_size: int) -> dict[str, jax.Array]:
    return {"y": jnp.zeros((batch_size,), jnp.int32)}

  def null(self, batch_size: int) -> Optional[dict[str, np.ndarray]]:
    if self.null_label is None:
      return None
    return {"y": np.full((batch_size,), self.null_label, np.int32)}

  def drop(self, rng: jax.Array, values: Arrays, prob: float) -> dict[str, jax.Array]:
    """Replaces each label by the null class with probability `prob`."""
    labels = values["y"]
    if prob <= 0:
      return {"y": labels}
    if self.null_label is None:
      raise ValueError("condition dropout needs a null class")
    keep = ~jax.random.bernoulli(rng, prob, labels.shape)
    return {"y": jnp.where(keep, labels, self.null_label)}

  def prepare(self, value, batch_size: Optional[int]) -> dict[str, np.ndarray]:
    return {"y": validation.check_labels(value, self.num_classes, batch_size, name=self.arg)}

  def default(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Uniformly random classes (guided-diffusion's image_sample.py)."""
    return {"y": rng.integers(0, self.num_classes, (batch_size,)).astype(np.int32)}


def batch_size_of(values: Arrays) -> Optional[int]:
  """The leading size shared by prepared conditioning arrays (None if none)."""
  sizes = {int(np.shape(v)[0]) for v in values.values()}
  if len(sizes) > 1:
    raise ValueError(f"conditioning inputs disagree on the batch size: {sorted(sizes)}")
  return sizes.pop() if sizes else None


@dataclasses.dataclass(frozen=True)
class LabelTarget:
  """The class label as a training target (the noisy classifier), not an input."""
  num_classes: int

  def from_example(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {"label": np.int32(example["label"])}


@dataclasses.dataclass(frozen=True)
class AttributeTargets:
  """Every attribute of an example as a training target (the evaluator):
  ((name, number of values), ...), each read as an int32 under its name."""
  attributes: tuple

  def from_example(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {name: np.int32(example[name]) for name, _ in self.attributes}
