"""The TFDS builder of the embedded `shapes` data: `Shapes`, with configs
"one_object_16" ... "two_objects_64" (`shapes.render_example`), the
upsampling pairs "one_object_16_to_32" and "two_objects_32_to_64" (a
"low_res" image: the same scene rendered at the smaller size), and
"scenes_16" ... "scenes_64" (0 to 3 objects, `scenes.render`). Split `s`
holds example `i` of the stream `SPLIT_SEEDS[s]` at index `i`.

Its own module, so that `shapes` (the drawing) and `scenes` (built on it)
form no import circle.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from diffusion_jax.data import scenes, shapes


def features(image_size: int, num_objects: int,
             low_res_size: int = 0) -> tfds.features.FeaturesDict:
  """The TFDS features of `shapes.render_example(..., image_size, num_objects)`.

  Args:
    image_size: side S of the images.
    num_objects: 1 or 2; two objects add "shape2", "color2", "size2", "position2".
    low_res_size: > 0 adds "low_res", a uint8 [s, s, 3] render
      (`shapes.render_pair`).

  Returns:
    int64 scalar tensors, "image" a uint8 [S, S, 3] tensor, "caption" text.
  """
  scalar = lambda: tfds.features.Tensor(shape=(), dtype=np.int64)  # noqa: E731
  spec = {"image": tfds.features.Tensor(shape=(image_size, image_size, 3),
                                        dtype=np.uint8),
          "label": scalar(), "caption": tfds.features.Text()}
  if low_res_size:
    spec["low_res"] = tfds.features.Tensor(shape=(low_res_size, low_res_size, 3),
                                           dtype=np.uint8)
  if num_objects == shapes.SCENES:
    spec["num_objects"] = scalar()
    spec.update({name: tfds.features.Tensor(shape=(scenes.NUM_CELLS,), dtype=np.int64)
                 for name in ("cell_shape", "cell_color", "cell_size")})
    spec.update({f"cell_{i}": scalar() for i in range(scenes.NUM_CELLS)})
    return tfds.features.FeaturesDict(spec)
  for suffix in ("", "2")[:num_objects]:
    spec.update({key + suffix: scalar() for key in shapes.ATTRIBUTES})
  return tfds.features.FeaturesDict(spec)


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  """A `Shapes` variant: image side, number of objects (1, 2, or `shapes.SCENES`:
  0 to 3), and the side of the low-res render upsampling configs add (0: none)."""
  image_size: int = 16
  num_objects: int = 1
  low_res_size: int = 0


def _make_config(num_objects: int, image_size: int, low_res_size: int = 0) -> ShapesConfig:
  kind = {1: "one_object", 2: "two_objects", shapes.SCENES: "scenes"}[num_objects]
  name = f"{kind}_{image_size}"
  description = f"{kind.replace('_', ' ')}, {image_size}x{image_size}"
  if low_res_size:
    name = f"{kind}_{low_res_size}_to_{image_size}"
    description += f" with the same scene at {low_res_size}x{low_res_size}"
  return ShapesConfig(name=name, image_size=image_size, num_objects=num_objects,
                      low_res_size=low_res_size, description=description)


class Shapes(tfds.core.GeneratorBasedBuilder):
  """Coloured circles, squares and triangles on a 3x3 grid, with captions."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = ([_make_config(n, s) for n in (1, 2, shapes.SCENES)
                      for s in shapes.IMAGE_SIZES]
                     + [_make_config(n, s, low) for n, low, s in shapes.UPSAMPLING])
  DEFAULT_CONFIG_NAME = "one_object_16"

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup needs the `importlib_resources` backport for classes
    # in a package; the path only serves to look for (absent) checksums.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self, features=features(config.image_size, config.num_objects,
                                        config.low_res_size),
        description=__doc__, supervised_keys=("image", "label"),
        disable_shuffling=True)  # example i of a split is shapes.render_example(seed, i)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in shapes.SPLIT_SIZES}

  def _generate_examples(self, split: str):
    config = self.builder_config
    for index in range(shapes.SPLIT_SIZES[split]):
      if config.num_objects == shapes.SCENES:
        yield index, scenes.render(shapes.SPLIT_SEEDS[split], index, config.image_size,
                                   config.low_res_size)
      elif config.low_res_size:
        yield index, shapes.render_pair(shapes.SPLIT_SEEDS[split], index, config.low_res_size,
                                 config.image_size, config.num_objects)
      else:
        yield index, shapes.render_example(shapes.SPLIT_SEEDS[split], index, config.image_size,
                                    config.num_objects)
