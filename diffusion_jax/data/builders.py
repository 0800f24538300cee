"""The dataset registry: a name -> a prepared TFDS builder to read from.

Names:
  "shapes", "shapes/<config>"  coloured shapes (`shapes_tfds.Shapes`), embedded;
                               default config "one_object_16"
  "digits", "digits/<config>"  scikit-learn digits (`digits.Digits`),
                               embedded; default config "16"
  "folder:PATH"                the user's images in the folder PATH
                               (`folder.UserImageFolder`): classes from
                               subfolders or file-name prefixes, captions
                               from .txt files, resized to `image_size`
  anything else                a public TFDS dataset ("mnist", "cifar10",
                               "mnist:3.0.1", "celeb_a/..."), which must have
                               been prepared beforehand (it needs the network)

The embedded and folder datasets are written as array_record into the data
dir on first use, under a file lock, and reused afterwards (a folder's data
until its files or the image size change). Read them with
`builder.as_data_source()[split][i]`, a dict of numpy values; `metadata`
says what the model needs (image size, channels, classes, captions).
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import time
from typing import Any, Callable, Iterator

import tensorflow_datasets as tfds
from absl import logging

from diffusion_jax.data import digits, folder, shapes, shapes_tfds

ENV_DATA_DIR = "DIFFUSION_JAX_DATA_DIR"
# The embedded builders and their number of classes (their labels are
# int64 tensors, not ClassLabel features).
EMBEDDED = {"shapes": (shapes_tfds.Shapes, shapes.NUM_CLASSES),
            "digits": (digits.Digits, digits.NUM_CLASSES)}
_FILE_FORMAT = "array_record"
FOLDER_PREFIX = "folder:"


def default_data_dir() -> str:
  """$DIFFUSION_JAX_DATA_DIR, or ~/.cache/diffusion_jax/tensorflow_datasets."""
  return (os.environ.get(ENV_DATA_DIR)
          or os.path.expanduser("~/.cache/diffusion_jax/tensorflow_datasets"))



def builtin_names() -> list[str]:
  """Every embedded "dataset/config" name, e.g. "shapes/two_objects_32"."""
  return [f"{name}/{config.name}" for name, (cls, _) in EMBEDDED.items()
          for config in cls.BUILDER_CONFIGS]


def load_builder(name: str, data_dir: str | None = None, *,
                 image_size: int = 0) -> tfds.core.DatasetBuilder:
  """A prepared builder for `name`; prepares embedded and folder datasets on first use.

  Args:
    name: "shapes", "digits", "<one of those>/<config>", "folder:PATH", or a
      public TFDS name (with an optional "/config" and ":version").
    data_dir: where the prepared data lives; default `default_data_dir()`.
    image_size: for "folder:PATH", the side the images are cropped and
      resized to, or 0 to keep theirs (all square, one size); ignored for
      other names.

  Returns:
    A builder whose `as_data_source()` gives random access to each split.

  Raises:
    ValueError: an unknown name or config, a bad image folder (see
      `folder.scan_folder`), or a public dataset that is not prepared in
      `data_dir` in a random-access format.
  """
  data_dir = data_dir or default_data_dir()
  if name.startswith(FOLDER_PREFIX):
    return _folder_builder(name[len(FOLDER_PREFIX):], image_size, data_dir)
  dataset, _, config = name.partition("/")
  if dataset in EMBEDDED:
    return _embedded_builder(EMBEDDED[dataset][0], config or None, data_dir)
  return _public_builder(name, data_dir)


def _embedded_builder(cls: type[tfds.core.GeneratorBasedBuilder], config: str | None,
                      data_dir: str) -> tfds.core.DatasetBuilder:
  """Builds `cls` with `config` in `data_dir` once, then reuses it."""
  configs = [c.name for c in cls.BUILDER_CONFIGS]
  config = config or cls.DEFAULT_CONFIG_NAME
  if config not in configs:
    raise ValueError(f"{cls.name} has no config {config!r}; valid: {', '.join(configs)}")
  make = functools.partial(cls, data_dir=data_dir, config=config,
                           file_format=_FILE_FORMAT)
  return _prepared_once(make, f"{cls.name}/{config}", data_dir)


def _folder_builder(path: str, image_size: int,
                    data_dir: str) -> tfds.core.DatasetBuilder:
  """The folder's builder, prepared once per folder contents and image size."""
  if not path:
    raise ValueError("folder: needs a path, e.g. folder:/data/my_images")
  config = folder.make_config(path, image_size)  # checks the folder
  make = functools.partial(folder.UserImageFolder, data_dir=data_dir, config=config,
                           file_format=_FILE_FORMAT)
  return _prepared_once(make, f"{folder.UserImageFolder.name}/{config.name}", data_dir,
                        check=lambda: folder.verify_images(config.scan))


def _prepared_once(make: Callable[[], tfds.core.DatasetBuilder], label: str,
                   data_dir: str, check: Callable[[], None] | None = None
                   ) -> tfds.core.DatasetBuilder:
  """`make()`, prepared in `data_dir` under a file lock unless it already is.

  Args:
    make: creates the builder.
    label: "dataset/config", for the lock file and the logs.
    data_dir: where the prepared data lives.
    check: run before preparing; raises to stop it.
  """
  builder = make()
  if builder.is_prepared():
    return builder
  with _file_lock(data_dir, label.replace("/", "-")):
    builder = make()  # another process may have prepared it while we waited
    if not builder.is_prepared():
      if check is not None:
        check()
      logging.info("Preparing %s in %s on first use.", label, data_dir)
      start = time.perf_counter()
      builder.download_and_prepare()
      logging.info("Prepared %s in %.1f s.", label, time.perf_counter() - start)
  return builder


@contextlib.contextmanager
def _file_lock(data_dir: str, name: str) -> Iterator[None]:
  """An exclusive lock on `data_dir/.name.lock` (local paths only)."""
  if "://" in data_dir:  # remote (gs://...): no flock; prepare it beforehand
    yield
    return
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, f".{name}.lock"), "w") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def _public_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """The builder of a public TFDS dataset already prepared in `data_dir`."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"unknown dataset {name!r}: neither built in "
                     f"({', '.join(['shapes', 'digits', *builtin_names()])}) "
                     "nor a TFDS dataset") from None
  if not builder.is_prepared():
    raise ValueError(f"TFDS dataset {name!r} is not prepared in {data_dir}; prepare it "
                     f"first with network access: tfds build {name} --data_dir "
                     f"{data_dir} --file_format {_FILE_FORMAT}")
  random_access = set(tfds.core.FileFormat.with_random_access())
  if not random_access & set(builder.info.available_file_formats()):
    raise ValueError(f"TFDS dataset {name!r} in {data_dir} is stored as "
                     f"{builder.info.file_format.value}, which has no random access; "
                     f"rebuild it with --file_format {_FILE_FORMAT}")
  return builder


def metadata(builder: tfds.core.DatasetBuilder) -> dict[str, Any]:
  """What the model and pipeline need to know about a dataset.

  Args:
    builder: from `load_builder`.

  Returns:
    {"name": "shapes/one_object_16", "image_shape": (H, W, C) (None where
    the images vary), "image_size": H if square and fixed else None,
    "channels": C, "num_classes": int, or None without a class label,
    "has_caption": whether examples have a "caption" text,
    "attributes": {name: number of values} of the int features a clean-image
    evaluator predicts (shapes: each object's shape, color, size, position;
    its scenes: each cell's class, `scenes.CELL_CLASSES`; otherwise the
    label, if any),
    "splits": {split: number of examples}}.
  """
  features = builder.info.features
  if "image" not in features:
    raise ValueError(f"dataset {builder.name} has no 'image' feature: {list(features)}")
  height, width, channels = features["image"].shape
  return {
      "name": builder.info.full_name.rsplit("/", 1)[0],
      "image_shape": (height, width, channels),
      "image_size": height if height is not None and height == width else None,
      "channels": channels,
      "num_classes": _num_classes(builder),
      "has_caption": "caption" in features,
      "attributes": _attributes(builder),
      "splits": {split: info.num_examples for split, info in builder.info.splits.items()},
  }


def _attributes(builder: tfds.core.DatasetBuilder) -> dict[str, int]:
  features = builder.info.features
  if builder.name == "shapes" and "cell_0" in features:  # scenes: one class per cell
    from diffusion_jax.data import scenes
    return {f"cell_{i}": scenes.CELL_CLASSES for i in range(scenes.NUM_CELLS)}
  if builder.name == "shapes":
    return {key + suffix: count for suffix in ("", "2")
            for key, count in shapes.ATTRIBUTE_CLASSES.items() if key + suffix in features}
  classes = _num_classes(builder)
  return {"label": classes} if classes else {}


def _num_classes(builder: tfds.core.DatasetBuilder) -> int | None:
  features = builder.info.features
  if "label" in features and isinstance(features["label"], tfds.features.ClassLabel):
    return features["label"].num_classes
  if builder.name in EMBEDDED:
    return EMBEDDED[builder.name][1]
  return None


def label_names(name: str, labels, data_dir: str | None = None,
                image_size: int = 0) -> list[str]:
  """Human-readable names of `labels` (grid row titles), e.g. "red circle".

  Args:
    name: the dataset, as for `load_builder`.
    labels: class indices.
    data_dir: where the prepared data lives; default `default_data_dir()`.
    image_size: as for `load_builder` (only "folder:PATH" uses it).

  Returns:
    One name per label: a folder dataset's class names, a ClassLabel's
    names, or "class <label>".
  """
  dataset = name.partition("/")[0]
  if dataset == "shapes":
    return [shapes.label_name(int(label)) for label in labels]
  if dataset == "digits":
    return [f"digit {int(label)}" for label in labels]
  features = load_builder(name, data_dir, image_size=image_size).info.features
  feature = features["label"] if "label" in features else None  # noqa: SIM401 (no .get)
  if isinstance(feature, tfds.features.ClassLabel):
    return [feature.int2str(int(label)) for label in labels]
  return [f"class {int(label)}" for label in labels]
