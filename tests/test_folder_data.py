"""`folder:PATH` datasets: the user's images, prepared once into the data dir."""
import logging
import pathlib
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from diffusion_jax.data import builders, folder


def _save(path: pathlib.Path, height: int, width: int, seed: int, mode: str = "RGB"):
  """A random image of `mode` at `path`; returns the path."""
  path.parent.mkdir(parents=True, exist_ok=True)
  channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
  pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), np.uint8)
  Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(path)
  return path


def _expected(path: pathlib.Path, size: int) -> np.ndarray:
  """Pillow's own center crop and bicubic resize of the source."""
  image = Image.open(path).convert("RGB")
  width, height = image.size
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  image = image.crop((left, top, left + side, top + side))
  return np.asarray(image.resize((size, size), Image.BICUBIC))


def _load(images: pathlib.Path, tmp_path: pathlib.Path, image_size: int = 0):
  return builders.load_builder(f"folder:{images}", str(tmp_path / "data"),
                               image_size=image_size)


def _examples(builder) -> list[dict]:
  source = builder.as_data_source(split="train")
  return [source[i] for i in range(len(source))]


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else value


def test_classes_from_subfolders(tmp_path):
  images = tmp_path / "pets"
  files = [_save(images / "cat" / "a.png", 20, 30, 0),
           _save(images / "cat" / "b.png", 24, 24, 1),
           _save(images / "cat" / "c.png", 30, 20, 2),
           _save(images / "dog" / "deeper" / "d.png", 16, 40, 3),  # class of its top folder
           _save(images / "dog" / "e.png", 12, 12, 4, "L")]
  (images / "dog" / "notes.md").write_text("not an image")
  builder = _load(images, tmp_path, image_size=8)
  meta = builders.metadata(builder)
  assert (meta["image_shape"], meta["num_classes"], meta["has_caption"]) == \
         ((8, 8, 3), 2, False)
  assert meta["splits"] == {"train": 5}
  assert builder.info.features["label"].names == ["cat", "dog"]
  examples = _examples(builder)
  labels = [int(e["label"]) for e in examples]
  assert labels == [0, 0, 0, 1, 1]  # files in the order of their relative paths
  for example, path in zip(examples, files):
    assert example["image"].shape == (8, 8, 3) and example["image"].dtype == np.uint8
    difference = np.abs(example["image"].astype(int) - _expected(path, 8).astype(int))
    assert difference.max() <= 1


def test_classes_from_file_name_prefixes(tmp_path):
  images = tmp_path / "flat"
  files = [_save(images / "bird_1.png", 8, 8, 0), _save(images / "cat_1.JPG", 8, 8, 1),
           _save(images / "cat_2.png", 8, 8, 2, "RGBA")]
  builder = _load(images, tmp_path)
  assert builder.info.features["label"].names == ["bird", "cat"]
  assert builders.metadata(builder)["image_size"] == 8
  examples = _examples(builder)
  assert [int(e["label"]) for e in examples] == [0, 1, 1]
  for example, path in zip(examples, files):  # the size is theirs: pixels unchanged
    np.testing.assert_array_equal(example["image"],
                                  np.asarray(Image.open(path).convert("RGB")))


def test_unlabelled_folder(tmp_path):
  images = tmp_path / "plain"
  _save(images / "one.png", 6, 6, 0)
  _save(images / "two_2.jpeg", 6, 6, 1)  # one name without "_": no labels at all
  builder = _load(images, tmp_path)
  assert "label" not in builder.info.features
  meta = builders.metadata(builder)
  assert meta["num_classes"] is None and not meta["has_caption"]
  assert [sorted(e) for e in _examples(builder)] == [["image"], ["image"]]
  assert builders.label_names(f"folder:{images}", [1], str(tmp_path / "data")) == ["class 1"]


def test_captions_from_text_files(tmp_path):
  images = tmp_path / "captioned"
  _save(images / "a.png", 6, 6, 0)
  _save(images / "b.png", 6, 6, 1)
  (images / "a.txt").write_text("  a red square\n\n")
  builder = _load(images, tmp_path)
  assert builders.metadata(builder)["has_caption"]
  assert [_text(e["caption"]) for e in _examples(builder)] == ["a red square", ""]


def test_changed_folder_is_rebuilt_unchanged_is_reused(tmp_path, caplog):
  images = tmp_path / "growing"
  _save(images / "a.png", 6, 6, 0)
  _save(images / "b.png", 6, 6, 1)
  first = _load(images, tmp_path)
  assert len(first.as_data_source(split="train")) == 2
  with caplog.at_level(logging.INFO, logger="absl"):
    again = _load(images, tmp_path)
  assert "Preparing" not in caplog.text
  assert again.builder_config.name == first.builder_config.name
  _save(images / "c.png", 6, 6, 2)
  with caplog.at_level(logging.INFO, logger="absl"):
    grown = _load(images, tmp_path)
  assert "Preparing user_image_folder/" in caplog.text
  assert grown.builder_config.name != first.builder_config.name
  assert len(grown.as_data_source(split="train")) == 3
  resized = _load(images, tmp_path, image_size=4)
  assert resized.builder_config.name != grown.builder_config.name
  assert _examples(resized)[0]["image"].shape == (4, 4, 3)


def test_label_names_are_the_folder_classes(tmp_path):
  images = tmp_path / "named"
  _save(images / "zebra" / "1.png", 6, 6, 0)
  _save(images / "ant" / "1.png", 6, 6, 1)
  _save(images / "ant-lion" / "1.png", 6, 6, 2)  # its files sort before ant's
  names = builders.label_names(f"folder:{images}", np.array([2, 0, 1]),
                               str(tmp_path / "data"))
  assert names == ["zebra", "ant", "ant-lion"]


def _missing(root):
  return root / "nowhere", "does not exist"


def _a_file(root):
  return _save(root / "x.png", 6, 6, 0), "is not a directory"


def _no_images(root):
  (root / "sub").mkdir(parents=True)
  (root / "sub" / "a.txt").write_text("a caption without an image")
  (root / "b.gif").write_bytes(b"GIF89a")
  return root, "no PNG or JPEG images"


def _mixed_sizes(root):
  _save(root / "a.png", 8, 8, 0)
  _save(root / "b.png", 8, 8, 1)
  _save(root / "c.png", 16, 16, 2)
  return root, r"differ in size \(a\.png is 8x8, c\.png is 16x16\).*--config\.data\.image_size"


def _not_square(root):
  _save(root / "a.png", 8, 12, 0)
  return root, r"not square \(a\.png is 12x8\).*--config\.data\.image_size"


def _garbage(root):
  _save(root / "a.png", 8, 8, 0)
  (root / "b.png").write_bytes(b"this is not a png")
  return root, f"cannot read image {re.escape(str(root / 'b.png'))}"


def _top_level_and_subfolders(root):
  _save(root / "cat" / "a.png", 8, 8, 0)
  _save(root / "loose.png", 8, 8, 1)
  return root, r"class subfolders and also at its top level \(loose\.png\)"


@pytest.mark.parametrize("make", [_missing, _a_file, _no_images, _mixed_sizes, _not_square,
                                  _garbage, _top_level_and_subfolders])
def test_bad_folders(make, tmp_path):
  path, message = make(tmp_path / "images")
  with pytest.raises(ValueError, match=message) as error:
    _load(path, tmp_path)
  assert "\n" not in str(error.value)
  assert not (tmp_path / "data").exists()  # raised before preparing anything


@pytest.mark.parametrize("image_size", [0, 4])
def test_truncated_image_is_named_before_preparing(image_size, tmp_path):
  images = tmp_path / "images"
  _save(images / "a.png", 8, 8, 0)
  broken = _save(images / "b.png", 8, 8, 1)
  broken.write_bytes(broken.read_bytes()[:60])  # the header survives, the pixels do not
  with pytest.raises(ValueError, match=f"cannot read image {re.escape(str(broken))}"):
    _load(images, tmp_path, image_size=image_size)
  assert not list((tmp_path / "data").glob("user_image_folder/*/*/*.array_record*"))


def test_scan_is_sorted_and_skips_hidden_files(tmp_path):
  images = tmp_path / "images"
  for name in ("b/2.png", "a/10.PNG", "a/9.jpg", ".hidden/x.png", "a/.y.png"):
    _save(images / name, 6, 6, 0)
  scan = folder.scan_folder(str(images))
  assert scan.files == ("a/10.PNG", "a/9.jpg", "b/2.png")
  assert (scan.class_names, scan.labels, scan.captions) == (("a", "b"), (0, 0, 1), None)


def test_builder_is_not_registered():
  assert "user_image_folder" not in tfds.list_builders(with_community_datasets=False)
