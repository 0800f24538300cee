"""Judging samples by a clean-image evaluator: fidelity and diversity.

- `predicted_labels`: the class of each image as the evaluator sees it (its
  "label" head, or for `shapes` the label its shape and color heads make).
- `class_accuracy`: how often that is the class the samples were asked for.
- `mean_pairwise_distance`: diversity, the mean L2 distance between the
  evaluator features of two samples of the same class.
- `attribute_spread`: diversity of what the label leaves free (a shape's size
  and position): the entropy of the predicted values within a class, over
  the largest entropy possible (0: always the same value; 1: uniform).

- `roughness`: the mean absolute difference between neighbouring pixels, high
  for residual noise; `residual_noise_threshold` is twice its largest value
  over a dataset's test split, and `residual_noise_fraction` the share of
  samples above it.

`judge(evaluator, images, labels)` gathers them in one dict;
`judge_captions(evaluator, images, named, prompt_ids)` does the same for a
text-to-image model's samples, against what each caption names;
`judge_scene_captions(evaluator, images, captions)` reads whole scenes with
a scene evaluator (`scenes16`) and checks every object, place, relation and
count a caption names, and that nothing else is there. A guided
model is judged by an evaluator, never by the classifier (or CLIP) that
guided it.
"""
from __future__ import annotations

import functools
from typing import Mapping, Optional, Sequence

import numpy as np

from diffusion_jax.data import scenes, shapes
from diffusion_jax.evaluation import evaluator as evaluator_lib

# The attributes a class label fixes; the evaluator's others are free.
LABEL_ATTRIBUTES = ("label", "shape", "color")


def predicted_labels(predictions: Mapping[str, np.ndarray]) -> np.ndarray:
  """int [N]: the class label of each image from an evaluator's predictions."""
  if "label" in predictions:
    return np.asarray(predictions["label"])
  if "shape" in predictions and "color" in predictions:
    return shapes.label_of(np.asarray(predictions["shape"]), np.asarray(predictions["color"]))
  raise ValueError(f"an evaluator predicting {sorted(predictions)} names no class label")


def class_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
  """The fraction of images whose predicted class is the asked-for one."""
  return float(np.mean(np.asarray(predicted) == np.asarray(labels)))


def _groups(labels: np.ndarray):
  labels = np.asarray(labels)
  return [np.flatnonzero(labels == value) for value in np.unique(labels)]


def mean_pairwise_distance(features: np.ndarray, labels: np.ndarray) -> float:
  """Mean L2 distance over the distinct pairs of each class (features [N, F]),
  averaged over the classes with at least two members."""
  means = []
  for members in _groups(labels):
    if len(members) < 2:
      continue
    f = np.asarray(features, np.float64)[members]  # [n, F]
    squared = np.sum(f * f, -1)
    d2 = squared[:, None] + squared[None, :] - 2 * f @ f.T  # [n, n]
    upper = np.triu_indices(len(members), k=1)
    means.append(np.mean(np.sqrt(np.maximum(d2[upper], 0.0))))
  if not means:
    raise ValueError("diversity needs at least two samples of one class")
  return float(np.mean(means))


def normalized_entropy(values: np.ndarray, num_values: int) -> float:
  """Entropy of the empirical distribution of `values` in [0, num_values),
  over log(num_values): 0 for a constant, 1 for uniform."""
  counts = np.bincount(np.asarray(values), minlength=num_values)
  p = counts[counts > 0] / counts.sum()
  return float(-np.sum(p * np.log(p)) / np.log(num_values)) if num_values > 1 else 0.0


def attribute_spread(predictions: Mapping[str, np.ndarray], labels: np.ndarray,
                     num_values: Mapping[str, int]) -> dict[str, float]:
  """{attribute: mean over classes of its normalized entropy within a class},
  for the attributes in `num_values`."""
  groups = _groups(labels)
  return {name: float(np.mean([normalized_entropy(predictions[name][g], n) for g in groups]))
          for name, n in num_values.items()}


def free_attributes(evaluator) -> dict[str, int]:
  """{attribute: number of values} of the evaluator's attributes that a class
  label leaves free (for one-object `shapes`: size and position)."""
  return {name: n for name, n in evaluator.spec.model.attributes
          if name not in LABEL_ATTRIBUTES and not name.endswith("2")}


def roughness(images) -> np.ndarray:
  """float [N]: the mean absolute difference between horizontal and between
  vertical neighbours, averaged, of images [N, H, W, C] in [-1, 1] (uint8
  images are rescaled). Smooth scenes score low; residual noise high."""
  x = np.asarray(images)
  x = x.astype(np.float64) / 127.5 - 1.0 if x.dtype == np.uint8 else x.astype(np.float64)
  vertical = np.abs(np.diff(x, axis=1)).mean(axis=(1, 2, 3))
  horizontal = np.abs(np.diff(x, axis=2)).mean(axis=(1, 2, 3))
  return 0.5 * (vertical + horizontal)


RESIDUAL_NOISE_FACTOR = 2.0  # the threshold over the test split's largest roughness


def threshold_of(reference_images) -> float:
  """Twice the largest roughness over reference (real) images."""
  return float(RESIDUAL_NOISE_FACTOR * np.max(roughness(reference_images)))


@functools.lru_cache(maxsize=16)
def _split_threshold(name: str, data_dir: str, image_size: int, channels: int) -> float:
  import ml_collections

  from diffusion_jax.data import pipeline
  data = ml_collections.ConfigDict({"name": name, "data_dir": data_dir,
                                    "image_size": image_size, "channels": channels})
  return threshold_of(pipeline.split_examples(data, "test")[0])


def residual_noise_threshold(data_config) -> float:
  """The residual-noise threshold of `config.data`: twice the largest
  roughness over its test split (computed once per process)."""
  return _split_threshold(str(data_config.name), str(data_config.get("data_dir", "")),
                          int(data_config.get("image_size", 0)),
                          int(data_config.get("channels", 0)))


def residual_noise_fraction(images, threshold: float) -> float:
  """The fraction of images whose roughness is above `threshold`."""
  return float(np.mean(roughness(images) > threshold))


def judge(evaluator, images: np.ndarray, labels: np.ndarray,
          noise_threshold: Optional[float] = None) -> dict:
  """Fidelity and diversity of images asked to show classes `labels`.

  Returns:
    {"accuracy": class accuracy, "accuracy_<attr>": per label attribute,
     "feature_distance": mean within-class pairwise feature distance,
     "spread_<attr>": normalized within-class entropy per free attribute,
     "residual_noise": the fraction of images above `noise_threshold`,
     when one is given}.
  """
  labels = np.asarray(labels)
  outputs = evaluator_lib.outputs(evaluator, images)
  predictions = evaluator_lib.argmax_heads(outputs)
  result = {"accuracy": class_accuracy(predicted_labels(predictions), labels)}
  if "label" not in predictions:
    parts = {"shape": labels // len(shapes.COLORS), "color": labels % len(shapes.COLORS)}
    result.update({f"accuracy_{k}": class_accuracy(predictions[k], v) for k, v in parts.items()})
  result["feature_distance"] = mean_pairwise_distance(outputs[evaluator_lib.FEATURES], labels)
  spread = attribute_spread(predictions, labels, free_attributes(evaluator))
  result.update({f"spread_{k}": v for k, v in spread.items()})
  if noise_threshold is not None:
    result["residual_noise"] = residual_noise_fraction(images, noise_threshold)
  return result


def judge_captions(evaluator, images: np.ndarray, named: Sequence[Mapping[str, int]],
                   prompt_ids: np.ndarray) -> dict:
  """Fidelity and diversity of images asked to show captions.

  Args:
    evaluator: a clean-image evaluator of the captions' attributes.
    images: [N, S, S, C] samples.
    named: for each sample, the attributes its caption names, as values
      (`shapes.parse_caption`).
    prompt_ids: [N] which prompt each sample was drawn for.

  Returns:
    {"caption_accuracy": how often the evaluator sees every named attribute,
     "accuracy_<attr>": over the samples whose caption names it,
     "feature_distance": mean within-prompt pairwise feature distance,
     "spread_<attr>": normalized within-prompt entropy of each attribute,
     over the prompts that leave it free}.
  """
  outputs = evaluator_lib.outputs(evaluator, images)
  predictions = evaluator_lib.argmax_heads(outputs)
  hits = [all(predictions[k][i] == v for k, v in n.items()) for i, n in enumerate(named)]
  result = {"caption_accuracy": float(np.mean(hits))}
  for attribute in sorted({k for n in named for k in n}):
    which = [i for i, n in enumerate(named) if attribute in n]
    result[f"accuracy_{attribute}"] = float(np.mean(
        [predictions[attribute][i] == named[i][attribute] for i in which]))
  prompt_ids = np.asarray(prompt_ids)
  result["feature_distance"] = mean_pairwise_distance(outputs[evaluator_lib.FEATURES],
                                                      prompt_ids)
  sizes = dict(evaluator.spec.model.attributes)
  for attribute in ("size", "position"):
    free = [g for g in _groups(prompt_ids) if attribute not in named[g[0]]]
    if free and attribute in predictions:
      result[f"spread_{attribute}"] = float(np.mean(
          [normalized_entropy(predictions[attribute][g], sizes[attribute]) for g in free]))
  return result


def predicted_cells(evaluator, images) -> dict[str, np.ndarray]:
  """{"cell_shape", "cell_color", "cell_size"}: int [N, 9] (-1 empty), what
  a scene evaluator (heads "cell_0" ... "cell_8") sees in each cell."""
  predicted = evaluator_lib.predict(evaluator, images)
  codes = np.stack([predicted[f"cell_{i}"] for i in range(scenes.NUM_CELLS)], -1)  # [N, 9]
  return scenes.cells_from_codes(codes)


def cell_accuracy(predicted: Mapping[str, np.ndarray],
                  true: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Per cell, float [9]: "occupied" (empty or not, over all scenes), and
  "shape", "color", "size" over the scenes where the cell holds an object."""
  occupied = np.asarray(true["cell_shape"]) >= 0  # [N, 9]
  result = {"occupied": np.mean((np.asarray(predicted["cell_shape"]) >= 0) == occupied, 0)}
  for attribute in ("shape", "color", "size"):
    right = np.asarray(predicted[f"cell_{attribute}"]) == np.asarray(true[f"cell_{attribute}"])
    result[attribute] = (right & occupied).sum(0) / np.maximum(occupied.sum(0), 1)
  return result


def captions_hold(evaluator, images: np.ndarray, captions: Sequence[str]) -> np.ndarray:
  """bool [N]: whether the scene evaluator sees exactly what each caption
  says in its image (`scenes.caption_holds`)."""
  cells = predicted_cells(evaluator, images)
  return np.array([scenes.caption_holds(scenes.parse_caption(text),
                                        {k: v[i] for k, v in cells.items()})
                   for i, text in enumerate(captions)])


def judge_scene_captions(evaluator, images: np.ndarray, captions: Sequence[str],
                         prompt_ids: np.ndarray | None = None) -> dict:
  """Whole-scene fidelity of images asked to show `captions` [N].

  Returns:
    {"caption_accuracy": how often the scene evaluator sees exactly what
     the caption says (`scenes.caption_holds`: every object named, with its
     attributes, place and relation, and none other), "count_accuracy": how
     often it sees as many objects as the caption names, "object_accuracy":
     the share of the named objects it sees, each with its attributes and
     place (`scenes.objects_found`: relations and extra objects aside),
     "accuracy_<phrasing>": caption accuracy over the captions of each kind
     (`scenes.phrasing_of`), "accuracy_<n>_objects": over those naming n
     objects; with `prompt_ids` [N], "feature_distance", the mean
     within-prompt distance in the evaluator's features (diversity)}.
  """
  outputs = evaluator_lib.outputs(evaluator, images)
  predicted = evaluator_lib.argmax_heads(outputs)
  codes = np.stack([predicted[f"cell_{i}"] for i in range(scenes.NUM_CELLS)], -1)  # [N, 9]
  cells = scenes.cells_from_codes(codes)
  holds, counts, kinds, sizes, found = [], [], [], [], []
  for i, text in enumerate(captions):
    parsed = scenes.parse_caption(text)
    seen = {k: v[i] for k, v in cells.items()}
    named = sum(o["count"] for o in parsed["objects"])
    holds.append(scenes.caption_holds(parsed, seen))
    counts.append(named == (seen["cell_shape"] >= 0).sum())
    kinds.append(scenes.phrasing_of(parsed))
    sizes.append(named)
    found.append(scenes.objects_found(parsed, seen))
  holds, kinds, sizes = np.asarray(holds), np.asarray(kinds), np.asarray(sizes)
  result = {"caption_accuracy": float(holds.mean()), "count_accuracy": float(np.mean(counts)),
            "object_accuracy": float(np.sum(found) / max(sizes.sum(), 1))}
  for kind in sorted(set(kinds)):
    result[f"accuracy_{kind}"] = float(holds[kinds == kind].mean())
  for size in sorted(set(sizes)):
    result[f"accuracy_{size}_objects"] = float(holds[sizes == size].mean())
  if prompt_ids is not None:
    result["feature_distance"] = mean_pairwise_distance(outputs[evaluator_lib.FEATURES],
                                                        np.asarray(prompt_ids))
  return result
