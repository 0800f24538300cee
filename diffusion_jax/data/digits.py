"""Handwritten digits bundled with scikit-learn: a dataset with no download.

The 1797 8x8 images of `sklearn.datasets.load_digits` (values 0..16), scaled
to uint8 and resized with PIL bilinear to 16, 32 or 64 pixels (configs "16",
"32", "64"), one gray channel, label 0..9. The split is fixed: the examples
shuffled with `SPLIT_SEED`, then cut into `SPLIT_SIZES`. Each example keeps
its `index` in `load_digits()`.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

NUM_EXAMPLES = 1797
NUM_CLASSES = 10
IMAGE_SIZES = (16, 32, 64)
SPLIT_SIZES = {"train": 1397, "validation": 200, "test": 200}
SPLIT_SEED = 0
_MAX_VALUE = 16.0  # of load_digits pixels


def split_indices() -> dict[str, np.ndarray]:
  """Indices into `load_digits()` of each split: disjoint, deterministic.

  Returns:
    {"train": int64 [1397], "validation": int64 [200], "test": int64 [200]}.
  """
  order = np.random.default_rng(SPLIT_SEED).permutation(NUM_EXAMPLES)
  bounds = np.cumsum([0, *SPLIT_SIZES.values()])
  return {name: order[start:stop]
          for name, start, stop in zip(SPLIT_SIZES, bounds[:-1], bounds[1:])}


def resize(digit: np.ndarray, image_size: int) -> np.ndarray:
  """One `load_digits` image float [8, 8] in 0..16 -> uint8 [S, S, 1] (bilinear).

  Args:
    digit: the 8x8 image, values 0..16.
    image_size: side S of the result.

  Returns:
    uint8 [S, S, 1], 0 for background, 255 for full ink.
  """
  gray = np.round(np.asarray(digit) * (255.0 / _MAX_VALUE)).astype(np.uint8)  # [8, 8]
  image = Image.fromarray(gray).resize((image_size, image_size), Image.BILINEAR)
  return np.asarray(image)[..., None]


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
  """(images float [1797, 8, 8], labels int [1797]); imports scikit-learn."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  return digits.images, digits.target


@dataclasses.dataclass
class DigitsConfig(tfds.core.BuilderConfig):
  """A `Digits` variant: the image side."""
  image_size: int = 16


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits, upsampled."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [DigitsConfig(name=str(s), image_size=s,
                                  description=f"digits at {s}x{s}")
                     for s in IMAGE_SIZES]
  DEFAULT_CONFIG_NAME = "16"

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup needs the `importlib_resources` backport for classes
    # in a package; the path only serves to look for (absent) checksums.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8),
        "label": tfds.features.Tensor(shape=(), dtype=np.int64),
        "index": tfds.features.Tensor(shape=(), dtype=np.int64),
    })
    return tfds.core.DatasetInfo(builder=self, features=features, description=__doc__,
                                 supervised_keys=("image", "label"),
                                 disable_shuffling=True)  # split order is fixed

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    images, labels = _load_digits()
    return {name: self._generate_examples(images, labels, indices)
            for name, indices in split_indices().items()}

  def _generate_examples(self, images, labels, indices):
    size = self.builder_config.image_size
    for key, index in enumerate(indices):
      yield key, {"image": resize(images[index], size),
                  "label": np.int64(labels[index]), "index": np.int64(index)}
