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

An input the network encodes once per sample call (a caption, whose text
model runs once, not at every step) also has `encode(model, params, values)`
and `encoded_keys`, the model arguments the encoding supplies instead.

Inpainting will add a mask and known image, upsampling a low-resolution
image: each is a new class here and one line in `spec.py`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import validation
from diffusion_jax.text import tokenizer as tok_lib

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


def _caption_text(caption) -> str:
  return caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)


@dataclasses.dataclass(frozen=True)
class Caption:
  """A caption for GLIDE's text model: GPT-2 tokens and mask [B, text_ctx].

  Its null value, for caption dropout and classifier-free guidance, is the
  empty prompt (all padding, mask False), as GLIDE's. The UNet's text model
  encodes it once per sample call (`encode`).
  """
  text_ctx: int
  arg: str = "prompts"
  keys: tuple = ("tokens", "mask")
  encoded_keys: tuple = ("xf_proj", "xf_out")

  def from_example(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    tokens, mask = tok_lib.pad_and_mask([_caption_text(example["caption"])], self.text_ctx)
    return {"tokens": tokens[0], "mask": mask[0]}

  def placeholder(self, batch_size: int) -> dict[str, jax.Array]:
    return {"tokens": jnp.zeros((batch_size, self.text_ctx), jnp.int32),
            "mask": jnp.ones((batch_size, self.text_ctx), bool)}

  def null(self, batch_size: int) -> dict[str, np.ndarray]:
    tokens, mask = tok_lib.pad_and_mask([""] * batch_size, self.text_ctx)
    return {"tokens": tokens, "mask": mask}

  def drop(self, rng: jax.Array, values: Arrays, prob: float) -> dict[str, jax.Array]:
    """Replaces each caption by the empty prompt with probability `prob`."""
    tokens, mask = values["tokens"], values["mask"]
    if prob <= 0:
      return {"tokens": tokens, "mask": mask}
    keep = ~jax.random.bernoulli(rng, prob, tokens.shape[:1])[:, None]  # [B, 1]
    return {"tokens": jnp.where(keep, tokens, tok_lib.GPT2_END), "mask": mask & keep}

  def prepare(self, value, batch_size: Optional[int]) -> dict[str, np.ndarray]:
    tokens, mask = tok_lib.pad_and_mask(
        tok_lib.check_prompts(value, batch_size, name=self.arg), self.text_ctx)
    return {"tokens": tokens, "mask": mask}

  def default(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    raise ValueError(f"a text-to-image model needs {self.arg}: one per sample")

  def encode(self, model, params, values: Arrays) -> dict[str, jax.Array]:
    """The text model's output for the tokens: {"xf_proj", "xf_out"}."""
    xf_proj, xf_out = model.encode_text(params, values["tokens"], values["mask"])
    return {"xf_proj": xf_proj, "xf_out": xf_out}


@dataclasses.dataclass(frozen=True)
class ClipCaption:
  """A caption for the noised CLIP: CLIP-BPE tokens [B, text_ctx] and lens [B].

  Both a CLIP's training target and a CLIP guide's input, from the same
  `prompts` the diffusion model takes.
  """
  text_ctx: int
  arg: str = "prompts"
  keys: tuple = ("clip_tokens", "clip_lens")

  def from_example(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    tokens, lens = tok_lib.pad_and_lens([_caption_text(example["caption"])], self.text_ctx)
    return {"clip_tokens": tokens[0], "clip_lens": lens[0]}

  def placeholder(self, batch_size: int) -> dict[str, jax.Array]:
    return {"clip_tokens": jnp.zeros((batch_size, self.text_ctx), jnp.int32),
            "clip_lens": jnp.ones((batch_size,), jnp.int32)}

  def prepare(self, value, batch_size: Optional[int]) -> dict[str, np.ndarray]:
    tokens, lens = tok_lib.pad_and_lens(
        tok_lib.check_prompts(value, batch_size, name=self.arg), self.text_ctx)
    return {"clip_tokens": tokens, "clip_lens": lens}

  def default(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    raise ValueError(f"CLIP guidance needs {self.arg}: one per sample")


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
