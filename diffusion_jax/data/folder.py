"""A folder of the user's own images as a TFDS dataset ("folder:PATH").

The rules (guided-diffusion's `--data_dir`, extended):

  images    files ending .png, .jpg or .jpeg (any case), found recursively
            (following symlinks, skipping names that start with "."), in the
            order of their relative paths; read with Pillow, always RGB.
  size      with `image_size > 0`, each image is center-cropped to its
            largest square and resized to `image_size` (PIL bicubic, which
            antialiases when shrinking); with `image_size == 0`, the images
            must all be square and of one size, the dataset's size.
  classes   images in subfolders of PATH: the class is the top-level
            subfolder's name (then no image may lie in PATH itself); else,
            when every file name has a "_", the part before the first "_";
            else no label. `label` is a ClassLabel of the sorted names.
  captions  `cat_01.txt` beside `cat_01.png` is its caption (stripped); if
            any image has one, examples have a "caption" ("" for the others).

Examples are {"image": uint8 [S, S, 3], "label": int (if labelled),
"caption": str (if any)}, all in split "train". `scan_folder` finds and
checks everything without decoding the images and raises `ValueError` for a
bad folder; `verify_images` decodes each image and caption (run before
preparing). The builder config is named from a fingerprint of the folder
(paths, sizes, modification times) and `image_size`, so a changed folder gets
fresh data.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CAPTION_EXTENSION = ".txt"
_FINGERPRINT_CHARS = 12


@dataclasses.dataclass(frozen=True)
class FolderScan:
  """What `scan_folder` found in a folder.

  Attributes:
    root: the folder, an absolute path.
    files: the images' paths relative to `root` ("/"-separated), sorted.
    image_size: side S of the dataset's square images.
    class_names: the sorted class names, or None for unlabelled data.
    labels: each image's index into `class_names`, or None.
    captions: each image's caption file relative to `root` (None where it has
      none), or None when no image has one.
    fingerprint: hex digest of the files (paths, sizes, mtimes) and the size.
  """
  root: str
  files: tuple[str, ...]
  image_size: int
  class_names: tuple[str, ...] | None
  labels: tuple[int, ...] | None
  captions: tuple[str | None, ...] | None
  fingerprint: str


def _one_line(error: Exception) -> str:
  return " ".join(str(error).split()) or type(error).__name__


def _walk(root: str) -> list[str]:
  """Every file below `root`, relative and "/"-separated, hidden ones skipped."""
  found = []
  for directory, subdirs, names in os.walk(root, followlinks=True):
    subdirs[:] = [d for d in subdirs if not d.startswith(".")]
    relative = os.path.relpath(directory, root)
    for name in names:
      if not name.startswith("."):
        path = name if relative == "." else os.path.join(relative, name)
        found.append(path.replace(os.sep, "/"))
  return found


def _is_image(path: str) -> bool:
  return path.lower().endswith(IMAGE_EXTENSIONS)


def _classes(root: str, files: list[str]) -> tuple[tuple[str, ...] | None,
                                                   tuple[int, ...] | None]:
  """(class names, labels) by subfolder or file-name prefix, or (None, None)."""
  nested = [f for f in files if "/" in f]
  if nested:
    top_level = [f for f in files if "/" not in f]
    if top_level:
      raise ValueError(f"{root} has images in class subfolders and also at its top "
                       f"level ({top_level[0]}); move every image into a class subfolder")
    classes = [f.split("/", 1)[0] for f in files]
  elif all("_" in f for f in files):
    classes = [f.split("_", 1)[0] for f in files]
  else:
    return None, None
  names = tuple(sorted(set(classes)))
  index = {name: i for i, name in enumerate(names)}
  return names, tuple(index[c] for c in classes)


def _open_size(root: str, file: str) -> tuple[int, int]:
  """(width, height) from the image header; ValueError naming an unreadable file."""
  try:
    with Image.open(os.path.join(root, file)) as image:
      return image.size
  except Exception as error:  # pylint: disable=broad-except  # PIL raises many kinds
    raise ValueError(f"cannot read image {os.path.join(root, file)}: "
                     f"{_one_line(error)}") from None


def _common_size(root: str, files: list[str]) -> int:
  """The side of the images, which must all be square and of one size."""
  sizes = [_open_size(root, f) for f in files]
  for file, size in zip(files, sizes):
    if size != sizes[0]:
      raise ValueError(
          f"images in {root} differ in size ({files[0]} is {sizes[0][0]}x{sizes[0][1]}, "
          f"{file} is {size[0]}x{size[1]}); set --config.data.image_size to "
          "center-crop and resize them")
  width, height = sizes[0]
  if width != height:
    raise ValueError(f"images in {root} are not square ({files[0]} is {width}x{height}); "
                     "set --config.data.image_size to center-crop and resize them")
  return width


def _fingerprint(root: str, paths: list[str], image_size: int) -> str:
  digest = hashlib.sha256(f"{root}\0{image_size}\0".encode())
  for path in sorted(paths):
    stat = os.stat(os.path.join(root, path))
    digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
  return digest.hexdigest()


def scan_folder(path: str, image_size: int = 0) -> FolderScan:
  """Finds and checks the images, classes and captions of a folder.

  Reads the image headers only when `image_size` is 0 (for their sizes);
  `verify_images` decodes them.

  Args:
    path: the folder ("~" expanded, relative to the working directory).
    image_size: side of the dataset's images, or 0 to take the images' own.

  Returns:
    The folder's `FolderScan`.

  Raises:
    ValueError: (one line) the path is not a directory, it has no PNG or
      JPEG image, images lie both in PATH and in class subfolders, an image
      header is unreadable, or with `image_size` 0 the images are not square
      or differ in size.
  """
  if image_size < 0:
    raise ValueError(f"image_size must be 0 or positive, got {image_size}")
  root = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(root):
    raise ValueError(f"image folder {root} does not exist")
  if not os.path.isdir(root):
    raise ValueError(f"image folder {root} is not a directory")
  everything = set(_walk(root))
  files = sorted(f for f in everything if _is_image(f))
  if not files:
    raise ValueError(f"image folder {root} has no PNG or JPEG images (.png, .jpg, .jpeg)")
  class_names, labels = _classes(root, files)
  captions = [os.path.splitext(f)[0] + CAPTION_EXTENSION for f in files]
  captions = [c if c in everything else None for c in captions]
  size = image_size or _common_size(root, files)
  used = files + sorted({c for c in captions if c})
  return FolderScan(root=root, files=tuple(files), image_size=size,
                    class_names=class_names, labels=labels,
                    captions=tuple(captions) if any(captions) else None,
                    fingerprint=_fingerprint(root, used, image_size))


def read_image(path: str, image_size: int) -> np.ndarray:
  """An image file -> uint8 [S, S, 3]: RGB, center-cropped square, bicubic resize.

  Args:
    path: the image file.
    image_size: side S of the result.

  Returns:
    The image; unchanged pixels when it already is S x S.
  """
  with Image.open(path) as image:
    image = image.convert("RGB")
  width, height = image.size
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  if (width, height) != (side, side):
    image = image.crop((left, top, left + side, top + side))
  if side != image_size:
    image = image.resize((image_size, image_size), Image.BICUBIC)
  return np.asarray(image, np.uint8)


def read_caption(path: str) -> str:
  """The stripped UTF-8 text of a caption file."""
  with open(path, encoding="utf-8") as handle:
    return handle.read().strip()


def verify_images(scan: FolderScan) -> None:
  """Decodes every image and caption of `scan`.

  Raises:
    ValueError: (one line) naming the first corrupt or unreadable file.
  """
  for file in scan.files:
    path = os.path.join(scan.root, file)
    try:
      with Image.open(path) as image:
        image.load()
    except Exception as error:  # pylint: disable=broad-except  # PIL raises many kinds
      raise ValueError(f"cannot read image {path}: {_one_line(error)}") from None
  for file in filter(None, scan.captions or ()):
    path = os.path.join(scan.root, file)
    try:
      read_caption(path)
    except (OSError, UnicodeDecodeError) as error:
      raise ValueError(f"cannot read caption {path}: {_one_line(error)}") from None


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
  """A `UserImageFolder` variant: one scanned folder at one image size."""
  scan: FolderScan | None = dataclasses.field(default=None, repr=False)


def make_config(path: str, image_size: int = 0) -> FolderConfig:
  """Scans `path` (see `scan_folder`) into the config of its dataset.

  The config is named "<folder name>_<size>_<fingerprint>", so changes to
  the folder or `image_size` name a new config (and new prepared data).

  Args:
    path: the image folder.
    image_size: side of the dataset's images, or 0 to take the images' own.

  Returns:
    The config to pass to `UserImageFolder(config=...)`.

  Raises:
    ValueError: a bad folder (see `scan_folder`).
  """
  scan = scan_folder(path, image_size)
  slug = re.sub(r"[^a-z0-9]+", "_", os.path.basename(scan.root).lower()).strip("_")
  name = f"{slug or 'images'}_{scan.image_size}_{scan.fingerprint[:_FINGERPRINT_CHARS]}"
  classes = len(scan.class_names) if scan.class_names else 0
  captions = sum(c is not None for c in scan.captions or ())
  logging.info("Image folder %s: %d images, %d classes, %d captions, %dx%d.", scan.root,
               len(scan.files), classes, captions, scan.image_size, scan.image_size)
  return FolderConfig(name=name, scan=scan,
                      description=f"{scan.root} at {scan.image_size}x{scan.image_size}")


class UserImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The images of a folder; build it with `config=make_config(path, size)`."""

  name = "user_image_folder"  # not registered: TFDS cannot build it by name
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup needs the `importlib_resources` backport for classes
    # in a package; the path only serves to look for (absent) checksums.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    scan = self.builder_config.scan
    size = scan.image_size
    spec = {"image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8)}
    if scan.class_names is not None:
      spec["label"] = tfds.features.ClassLabel(names=scan.class_names)
    if scan.captions is not None:
      spec["caption"] = tfds.features.Text()
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict(spec),
        description=f"The images of {scan.root}.",
        supervised_keys=("image", "label") if "label" in spec else None,
        disable_shuffling=True)  # example i is the i-th file by relative path

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    scan = self.builder_config.scan
    for index, file in enumerate(scan.files):
      example = {"image": read_image(os.path.join(scan.root, file), scan.image_size)}
      if scan.labels is not None:
        example["label"] = scan.labels[index]
      if scan.captions is not None:
        caption = scan.captions[index]
        example["caption"] = read_caption(os.path.join(scan.root, caption)) if caption else ""
      yield index, example
