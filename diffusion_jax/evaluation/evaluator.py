"""The shipped clean-image evaluators: loading by name, predicting, measuring.

Each evaluator is an export folder (safetensors + JSON) under `weights/`,
trained by `configs/shapes_evaluator.py` or `configs/digits_evaluator.py`,
with `accuracy.json`: its held-out accuracy per attribute, written by

    python -m diffusion_jax.evaluation --name=shapes16 --write
"""
from __future__ import annotations

import functools
import json
import pathlib
from typing import Optional

import jax
import numpy as np

from diffusion_jax import validation
from diffusion_jax.data import pipeline
from diffusion_jax.inference import loading
from diffusion_jax.models.evaluator import FEATURES

WEIGHTS = pathlib.Path(__file__).resolve().parent / "weights"
ACCURACY_FILE = "accuracy.json"


def evaluator_names() -> list[str]:
  """The evaluators that ship with the package ("digits16", "shapes16", ...)."""
  return sorted(p.name for p in WEIGHTS.iterdir() if (p / loading.PARAMS_FILE).exists())


def load_evaluator(name: str) -> loading.Bundle:
  """A shipped evaluator by name (no network, no workdir), or any evaluator
  export or workdir by path."""
  if name not in evaluator_names() and not pathlib.Path(name).exists():
    raise ValueError(f"no evaluator {name!r}; the package ships "
                     f"{', '.join(evaluator_names())}")
  return loading.load(name, kind="evaluator")  # a shipped one: its files checked


def stated_accuracy(name: str) -> dict[str, float]:
  """The held-out accuracy per attribute recorded beside a shipped evaluator."""
  return json.loads((WEIGHTS / name / ACCURACY_FILE).read_text())["accuracy"]


@functools.cache
def _apply(spec):
  """A jitted `fn(params, images) -> outputs` per evaluator (traced once per
  batch shape)."""
  return jax.jit(lambda params, images: spec.apply(params, images, None))


def outputs(evaluator: loading.Bundle, images, batch_size: int = 256) -> dict:
  """{head: logits [N, K], FEATURES: [N, F]} for images (uint8, or floats in
  [-1, 1]), in batches."""
  x = validation.check_images(images, image_size=evaluator.info.image_size,
                              channels=evaluator.info.channels)
  parts = [jax.device_get(_apply(evaluator.spec)(evaluator.params, x[i:i + batch_size]))
           for i in range(0, len(x), batch_size)]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def predict(evaluator: loading.Bundle, images) -> dict[str, np.ndarray]:
  """{attribute: int [N]} for images (uint8, or floats in [-1, 1])."""
  return argmax_heads(outputs(evaluator, images))


def argmax_heads(outputs: dict) -> dict[str, np.ndarray]:
  """{attribute: int [N]}: each head's most likely value."""
  return {k: np.argmax(v, -1) for k, v in outputs.items() if k != FEATURES}


def features(evaluator: loading.Bundle, images) -> np.ndarray:
  """The evaluator's feature vectors [N, F] of images."""
  return outputs(evaluator, images)[FEATURES]


def accuracy(evaluator: loading.Bundle, split: str = "test",
             data_dir: Optional[str] = None) -> dict[str, float]:
  """Accuracy per attribute on a split of the evaluator's own dataset."""
  images, examples = pipeline.split_examples(evaluator.config.data, split, data_dir=data_dir)
  predicted = predict(evaluator, images)
  return {name: float(np.mean(predicted[name] == np.array([e[name] for e in examples])))
          for name, _ in evaluator.spec.model.attributes}


def main(argv) -> None:
  """`--name=NAME [--split=test] [--write]`: prints the accuracy JSON; with
  --write, records it beside the shipped weights."""
  args = dict(a.lstrip("-").partition("=")[::2] for a in argv)
  name, split = args.get("name", "shapes16"), args.get("split", "test")
  evaluator = load_evaluator(name)
  result = {"name": name, "split": split, "examples_from": evaluator.config.data.name,
            "step": evaluator.step, "accuracy": accuracy(evaluator, split)}
  text = json.dumps(result, indent=2)
  print(text)  # noqa: T201
  if "write" in args:
    (WEIGHTS / name / ACCURACY_FILE).write_text(text + "\n")

