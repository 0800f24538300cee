"""The embedded datasets (shapes, digits) and the dataset registry, on CPU.

The 16-pixel configs are prepared once into .cache/test_tfds/<hash of the
dataset sources>, so reruns reuse them and a change of the generators gets
fresh data (the data of other hashes is deleted). The checks of pictures and
captions use their own reading of the words (hue of a color name, cells of a
position name), not the generator's.
"""
import colorsys
import logging
import math
import pathlib
import re
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

import conftest
from diffusion_jax.data import builders, digits, shapes

_REPO = pathlib.Path(__file__).resolve().parent.parent
_HUES = {"red": 0, "yellow": 60, "green": 120, "cyan": 180, "blue": 240, "magenta": 300}
_DIRECTIONS = ("top", "bottom", "left", "right", "center")
_RELATIONS = ("to the left of", "to the right of", "above", "below")
_NUM_CHECKED = 300  # examples per check


@pytest.fixture(scope="session")
def data_dir() -> str:
  path = pathlib.Path(conftest.data_dir())
  root = path.parent
  for stale in root.glob("[0-9a-f]" * 12):  # data of earlier versions of the sources
    if stale != path:
      shutil.rmtree(stale, ignore_errors=True)
  return str(path)


@pytest.fixture(scope="session")
def one_object(data_dir):
  return builders.load_builder("shapes", data_dir)


@pytest.fixture(scope="session")
def two_objects(data_dir):
  return builders.load_builder("shapes/two_objects_16", data_dir)


@pytest.fixture(scope="session")
def digit_builder(data_dir):
  return builders.load_builder("digits", data_dir)


def _examples(builder, split="train", count=_NUM_CHECKED):
  source = builder.as_data_source(split=split)
  return [source[i] for i in range(count)]


def _caption(example) -> str:
  caption = example["caption"]
  return caption.decode() if isinstance(caption, bytes) else caption


def _cell(position: int, size: int, interior: bool = False) -> tuple[slice, slice]:
  """Pixels of grid cell `position`; `interior` drops the rows/cols shared with a neighbour."""
  row, col = divmod(position, 3)
  lo, hi = (math.ceil, math.floor) if interior else (math.floor, math.ceil)
  return (slice(lo(row * size / 3), hi((row + 1) * size / 3)),
          slice(lo(col * size / 3), hi((col + 1) * size / 3)))


def _chroma(image: np.ndarray) -> np.ndarray:
  image = image.astype(np.float32)
  return image.max(-1) - image.min(-1)  # [S, S]


def _most_colored_hue(image: np.ndarray, position: int) -> tuple[float, float]:
  """(hue in degrees, chroma) of the most saturated pixel of the cell's interior."""
  cell = image[_cell(position, image.shape[0], interior=True)].reshape(-1, 3)
  pixel = cell[np.argmax(_chroma(cell[None])[0])] / 255.0
  hue = colorsys.rgb_to_hsv(*pixel)[0] * 360
  return hue, float(pixel.max() - pixel.min()) * 255


def _hue_distance(a: float, b: float) -> float:
  return min(abs(a - b), 360 - abs(a - b))


def _words(text: str) -> list[str]:
  return re.findall(r"[a-z]+", text)


# Determinism and splits.


@pytest.mark.parametrize("num_objects", [1, 2])
def test_render_example_is_deterministic(num_objects):
  first = shapes.render_example(7, 11, 16, num_objects)
  again = shapes.render_example(7, 11, 16, num_objects)
  assert first["image"].tobytes() == again["image"].tobytes()
  assert {k: v for k, v in first.items() if k != "image"} == \
         {k: v for k, v in again.items() if k != "image"}
  other = shapes.render_example(8, 11, 16, num_objects)
  assert first["image"].tobytes() != other["image"].tobytes()


def test_scene_is_the_same_at_every_size():
  small, large = shapes.render_example(3, 4, 16, 2), shapes.render_example(3, 4, 64, 2)
  assert {k: v for k, v in small.items() if k != "image"} == \
         {k: v for k, v in large.items() if k != "image"}
  pooled = large["image"].reshape(16, 4, 16, 4, 3).mean((1, 3))
  assert np.abs(pooled - small["image"]).mean() < 12


@pytest.mark.parametrize("builder_name", ["one_object", "two_objects"])
def test_split_example_i_is_render_example_i(builder_name, request):
  builder = request.getfixturevalue(builder_name)
  num_objects = builder.builder_config.num_objects
  for split, size in shapes.SPLIT_SIZES.items():
    source = builder.as_data_source(split=split)
    assert len(source) == size
    for index in (0, 1, size - 1):
      stored = source[index]
      expected = shapes.render_example(shapes.SPLIT_SEEDS[split], index, 16, num_objects)
      np.testing.assert_array_equal(stored["image"], expected["image"])
      assert _caption(stored) == expected["caption"]
      assert {k: int(stored[k]) for k in expected if k not in ("image", "caption")} == \
             {k: int(v) for k, v in expected.items() if k not in ("image", "caption")}


def test_splits_share_no_example(one_object):
  hashes = {split: {ex["image"].tobytes() for ex in _examples(one_object, split, 500)}
            for split in shapes.SPLIT_SIZES}
  assert all(len(h) == 500 for h in hashes.values())  # no repeats within a split
  assert not hashes["train"] & hashes["validation"]
  assert not hashes["train"] & hashes["test"]
  assert not hashes["validation"] & hashes["test"]


# Labels and attributes.


def test_one_object_labels(one_object):
  examples = _examples(one_object, count=1000)
  for ex in examples:
    assert ex["label"] == ex["shape"] * len(shapes.COLORS) + ex["color"]
    assert shapes.label_name(ex["label"]) == \
           f"{shapes.COLORS[ex['color']]} {shapes.SHAPES[ex['shape']]}"
  assert {int(ex["label"]) for ex in examples} == set(range(shapes.NUM_CLASSES))
  assert {int(ex["position"]) for ex in examples} == set(range(len(shapes.POSITIONS)))
  assert {int(ex["size"]) for ex in examples} == {0, 1}


def test_two_object_label_is_the_larger_object(two_objects):
  for ex in _examples(two_objects):
    assert ex["label"] == ex["shape"] * len(shapes.COLORS) + ex["color"]
    assert (shapes.SIZES[ex["size"]], shapes.SIZES[ex["size2"]]) == ("large", "small")
    assert ex["position"] != ex["position2"]
  for index in range(100):  # at 64 px, where areas are measurable
    ex = shapes.render_example(shapes.SPLIT_SEEDS["train"], index, 64, 2)
    chroma = _chroma(ex["image"])
    areas = []
    for position in (ex["position"], ex["position2"]):
      cell = chroma[_cell(position, 64)]
      areas.append((cell > cell.max() / 2).sum())
    assert areas[0] > 1.2 * areas[1], areas  # the labelled object is the larger one


def test_label_name():
  assert shapes.NUM_CLASSES == 18
  assert shapes.label_name(0) == "red circle"
  assert shapes.label_name(len(shapes.COLORS) + 2) == "blue square"
  assert shapes.label_name(17) == "cyan triangle"
  with pytest.raises(ValueError):
    shapes.label_name(18)


# Pictures.


def test_each_object_of_a_scene_has_its_stored_color_in_its_cell():
  """Scenes of 0 to 3 objects (shapes/scenes_*): the most saturated pixel of
  each occupied cell has the stored color's hue (copies of an earlier
  object's shape and color included: once they kept their own color), and
  an empty cell has no saturated pixel."""
  from diffusion_jax.data import scenes
  for index in range(200):
    ex = scenes.render(shapes.SPLIT_SEEDS["train"], index, 16)
    for cell in range(scenes.NUM_CELLS):
      hue, chroma = _most_colored_hue(ex["image"], cell)
      if ex["cell_color"][cell] < 0:
        assert chroma < 60, (index, cell, chroma)
        continue
      expected = _HUES[shapes.COLORS[ex["cell_color"][cell]]]
      assert chroma > 100 and _hue_distance(hue, expected) < 30, (index, cell, hue, ex["caption"])


@pytest.mark.parametrize("builder_name", ["one_object", "two_objects"])
def test_each_object_has_its_color_in_its_cell(builder_name, request):
  builder = request.getfixturevalue(builder_name)
  suffixes = ("", "2")[:builder.builder_config.num_objects]
  for ex in _examples(builder):
    image = ex["image"]
    for suffix in suffixes:
      hue, chroma = _most_colored_hue(image, ex["position" + suffix])
      expected = _HUES[shapes.COLORS[ex["color" + suffix]]]
      assert chroma > 100 and _hue_distance(hue, expected) < 30, (ex, suffix, hue)
    occupied = {int(ex["position" + s]) for s in suffixes}
    for position in set(range(9)) - occupied:  # the other cells hold background only
      assert _chroma(image[_cell(position, 16, interior=True)]).max() < 60


def test_background_is_dark_and_plain():
  for index in range(100):
    ex = shapes.render_example(5, index, 32, 1)
    empty = [ex["image"][_cell(p, 32, interior=True)].reshape(-1, 3)
             for p in range(9) if p != ex["position"]]
    background = np.concatenate(empty).astype(np.float32)  # [N, 3]
    assert background.max() < 110 and _chroma(background[None]).max() < 50
    assert background.std(0).max() < 6  # plain, lightly textured


def _fill_ratio(image: np.ndarray) -> float:
  """Object pixels / their bounding box: 1 square, pi/4 circle, 1/2 triangle."""
  chroma = _chroma(image)
  mask = chroma > chroma.max() / 2
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  return mask.sum() / ((rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1))


def test_large_shapes_have_their_shape_at_64px():
  expected = {"square": (0.9, 1.01), "circle": (0.7, 0.86), "triangle": (0.4, 0.6)}
  seen = set()
  for index in range(60):
    ex = shapes.render_example(9, index, 64, 1)
    if shapes.SIZES[ex["size"]] == "large":
      name = shapes.SHAPES[ex["shape"]]
      low, high = expected[name]
      assert low < _fill_ratio(ex["image"]) < high, (index, name)
      seen.add(name)
  assert seen == set(expected)


# Captions.


def test_one_object_captions_describe_the_object(one_object):
  templates = set()
  for ex in _examples(one_object):
    caption = _caption(ex)
    words = _words(caption)
    assert [w for w in words if w in shapes.COLORS] == [shapes.COLORS[ex["color"]]]
    assert [w for w in words if w in shapes.SHAPES] == [shapes.SHAPES[ex["shape"]]]
    assert set(words) & set(shapes.SIZES) <= {shapes.SIZES[ex["size"]]}
    directions = {w for w in words if w in _DIRECTIONS}
    assert directions in (set(), set(shapes.POSITIONS[ex["position"]].split())), caption
    templates.add(_skeleton(caption))
  assert len(templates) >= 5, templates


_NOUN = r"a (?:(small|large) )?(\w+) (\w+)"


def _find_object(ex, size, color, shape) -> str:
  """The suffix ("" or "2") of the object of `ex` that a noun phrase names."""
  matches = [s for s in ("", "2") if shapes.COLORS[ex["color" + s]] == color
             and shapes.SHAPES[ex["shape" + s]] == shape]
  assert len(matches) == 1, (ex, color, shape)
  assert size is None or shapes.SIZES[ex["size" + matches[0]]] == size
  return matches[0]


def _relation_holds(relation: str, position_a: int, position_b: int) -> bool:
  (row_a, col_a), (row_b, col_b) = divmod(position_a, 3), divmod(position_b, 3)
  return {"to the left of": col_a < col_b, "to the right of": col_a > col_b,
          "above": row_a < row_b, "below": row_a > row_b}[relation]


def test_two_object_captions_and_relations(two_objects):
  templates, relations = set(), 0
  for ex in _examples(two_objects):
    caption = _caption(ex)
    for s in ("", "2"):
      assert re.search(rf"\b{shapes.COLORS[ex['color' + s]]} {shapes.SHAPES[ex['shape' + s]]}\b",
                       caption), caption
    found = re.search(rf"{_NOUN} ({'|'.join(_RELATIONS)}) {_NOUN}", caption)
    if found:
      size_a, color_a, shape_a, relation, size_b, color_b, shape_b = found.groups()
      a = _find_object(ex, size_a, color_a, shape_a)
      b = _find_object(ex, size_b, color_b, shape_b)
      assert a != b
      assert _relation_holds(relation, ex["position" + a], ex["position" + b]), caption
      relations += 1
    templates.add(_skeleton(caption))
  assert relations > _NUM_CHECKED // 3
  assert len(templates) >= 4, templates


def _skeleton(caption: str) -> str:
  """The caption with attribute words replaced: its template, more or less."""
  for phrase in sorted(_RELATIONS, key=len, reverse=True):
    caption = caption.replace(phrase, "<rel>")
  for phrase in sorted(shapes.POSITIONS, key=len, reverse=True):
    caption = caption.replace(phrase, "<where>")
  for kind, words in (("color", shapes.COLORS), ("shape", shapes.SHAPES),
                      ("size", shapes.SIZES)):
    caption = re.sub(rf"\b({'|'.join(words)})\b", f"<{kind}>", caption)
  return caption


# Digits.


def test_digits_splits(digit_builder):
  indices = {}
  for split, size in digits.SPLIT_SIZES.items():
    source = digit_builder.as_data_source(split=split)
    assert len(source) == size
    indices[split] = {int(source[i]["index"]) for i in range(size)}
    assert len(indices[split]) == size
  assert sum(len(v) for v in indices.values()) == 1797
  assert set.union(*indices.values()) == set(range(1797))  # disjoint and complete
  assert sorted(digits.SPLIT_SIZES.values()) == [200, 200, 1397]


def test_digits_images_and_labels(digit_builder):
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  reference = load_digits()
  examples = _examples(digit_builder, "test", 200)
  assert {int(ex["label"]) for ex in examples} == set(range(10))
  for ex in examples:
    assert ex["image"].shape == (16, 16, 1) and ex["image"].dtype == np.uint8
    assert ex["label"] == reference.target[ex["index"]]
    pooled = ex["image"][..., 0].reshape(8, 2, 8, 2).mean((1, 3))  # [8, 8]
    original = reference.images[ex["index"]]
    assert np.corrcoef(pooled.ravel(), original.ravel())[0, 1] > 0.9
  assert max(ex["image"].max() for ex in examples) > 200  # full ink reaches white


def test_digits_split_is_deterministic():
  first, again = digits.split_indices(), digits.split_indices()
  for split in digits.SPLIT_SIZES:
    np.testing.assert_array_equal(first[split], again[split])


# The registry.


def test_load_builder_embedded(one_object, two_objects, digit_builder, data_dir):
  assert builders.metadata(one_object) == {
      "name": "shapes/one_object_16", "image_shape": (16, 16, 3), "image_size": 16,
      "channels": 3, "num_classes": 18, "has_caption": True,
      "splits": {"train": 20_000, "validation": 1000, "test": 1000},
      "attributes": shapes.ATTRIBUTE_CLASSES}
  meta = builders.metadata(two_objects)
  assert meta["name"] == "shapes/two_objects_16" and meta["has_caption"]
  assert meta["attributes"] == {**shapes.ATTRIBUTE_CLASSES,
                                **{f"{k}2": v for k, v in shapes.ATTRIBUTE_CLASSES.items()}}
  assert "shape2" in two_objects.info.features
  meta = builders.metadata(digit_builder)
  assert (meta["image_shape"], meta["num_classes"], meta["has_caption"], meta["attributes"]) == \
         ((16, 16, 1), 10, False, {"label": 10})
  bigger = builders.load_builder("digits/32", data_dir)
  assert bigger.as_data_source(split="validation")[0]["image"].shape == (32, 32, 1)


def test_preparing_logs_once_and_reuses(tmp_path, caplog):
  with caplog.at_level(logging.INFO, logger="absl"):
    first = builders.load_builder("digits", str(tmp_path))
  assert "Preparing digits/16" in caplog.text
  stamp = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.array_record*")}
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="absl"):
    again = builders.load_builder("digits", str(tmp_path))
  assert "Preparing" not in caplog.text
  assert stamp and stamp == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.array_record*")}
  np.testing.assert_array_equal(first.as_data_source(split="test")[5]["image"],
                                again.as_data_source(split="test")[5]["image"])


def test_default_data_dir_reads_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv(builders.ENV_DATA_DIR, str(tmp_path))
  assert builders.default_data_dir() == str(tmp_path)
  monkeypatch.delenv(builders.ENV_DATA_DIR)
  assert builders.default_data_dir().endswith("diffusion_jax/tensorflow_datasets")


@pytest.mark.parametrize("name, valid", [("shapes/one_object_8", "two_objects_64"),
                                         ("digits/128", "64")])
def test_bad_config_lists_the_valid_ones(name, valid, tmp_path):
  with pytest.raises(ValueError, match=f"valid: .*{valid}"):
    builders.load_builder(name, str(tmp_path))
  assert not list(tmp_path.iterdir())  # nothing prepared


def test_unknown_dataset_names_the_builtins(tmp_path):
  with pytest.raises(ValueError, match="'no_such_dataset'.*shapes.*digits"):
    builders.load_builder("no_such_dataset", str(tmp_path))


def test_unprepared_public_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(ValueError, match=f"tfds build mnist --data_dir {tmp_path}"):
    builders.load_builder("mnist", str(tmp_path))


def _write_mnist_metadata(data_dir, file_format: str) -> None:
  """The dataset_info.json of a prepared mnist with 7 + 3 examples, no data."""
  builder = tfds.builder("mnist", data_dir=str(data_dir), file_format=file_format)
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0)
      for name, n in (("train", 7), ("test", 3))]))
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_path)


def test_public_dataset_prepared_without_random_access(tmp_path):
  _write_mnist_metadata(tmp_path, "tfrecord")
  with pytest.raises(ValueError, match="no random access.*array_record"):
    builders.load_builder("mnist", str(tmp_path))


def test_public_dataset_with_mock_data(tmp_path):
  # mock_data replaces the array_record reader and download_and_prepare, but
  # load_builder still checks that the dataset is prepared: USE_FILES with
  # real metadata files (written here) makes it so.
  _write_mnist_metadata(tmp_path, "array_record")
  with tfds.testing.mock_data(num_examples=5, data_dir=str(tmp_path),
                              policy=tfds.testing.MockPolicy.USE_FILES):
    builder = builders.load_builder("mnist", "/elsewhere")
    meta = builders.metadata(builder)
    assert (meta["image_size"], meta["channels"], meta["num_classes"]) == (28, 1, 10)
    assert meta["splits"] == {"train": 7, "test": 3} and not meta["has_caption"]
    source = builder.as_data_source(split="train")
    assert len(source) == 5
    assert source[0]["image"].shape == (28, 28, 1) and 0 <= source[0]["label"] < 10
