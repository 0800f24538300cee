"""Scenes of 0 to 3 objects (`data/scenes.py`): captions agree with the
stored cells in every phrasing, the judge of a caption scores hand-made
scenes as it should, and the older configs render as before. Pure numpy."""
import hashlib

import numpy as np
import pytest

from diffusion_jax.data import scenes, shapes, shapes_tfds


def test_the_one_and_two_object_configs_render_as_before_the_scenes():
  """Images and captions of both older streams, hashed before scenes.py
  existed: adding the scenes must not move their rng draws."""
  both = hashlib.sha256()
  for n in (1, 2):
    for index in range(40):
      for size in (16, 32):
        example = shapes.render_example(1, index, size, n)
        both.update(example["image"].tobytes())
        both.update(example["caption"].encode())
  assert both.hexdigest()[:16] == "b3a0508796f065dc"


def _cells(*objects):
  """Cells of hand-made objects: (position, shape, color, size) each."""
  cells = {name: np.full((9,), -1, np.int64) for name in ("cell_shape", "cell_color",
                                                            "cell_size")}
  for position, shape, color, size in objects:
    cells["cell_shape"][position] = shapes.SHAPES.index(shape)
    cells["cell_color"][position] = shapes.COLORS.index(color)
    cells["cell_size"][position] = shapes.SIZES.index(size)
  return cells


def test_scenes_hold_0_to_3_objects_in_distinct_cells_with_counts_and_empty_scenes():
  examples = [scenes.render(1, i, 16) for i in range(600)]
  counts = np.array([e["num_objects"] for e in examples])
  assert set(counts) == {0, 1, 2, 3}
  for e in examples:
    assert (e["cell_shape"] >= 0).sum() == e["num_objects"]
    assert ((e["cell_shape"] >= 0) == (e["cell_color"] >= 0)).all()
    if e["num_objects"] == 0:
      assert e["label"] == scenes.EMPTY_LABEL and e["caption"] in scenes.EMPTY_CAPTIONS
    else:
      first = int(np.argmax(e["cell_shape"] >= 0))
      assert e["label"] == shapes.label_of(e["cell_shape"][first], e["cell_color"][first])
  captions = " ".join(e["caption"] for e in examples)
  assert "two " in captions and " above " in captions and " in the " in captions
  again = scenes.render(1, 5, 64)
  assert again["caption"] == examples[5]["caption"]  # the same scene at every size
  assert (again["cell_shape"] == examples[5]["cell_shape"]).all()


def test_every_phrasing_of_every_scene_holds_for_its_cells():
  """Each phrasing that fits a scene, parsed back, holds for the stored
  cells; and fails once a cell is changed (no caption fits two scenes)."""
  rng = np.random.default_rng(0)
  checked = dict.fromkeys(scenes.PHRASINGS, 0)
  for index in range(300):
    objects = scenes._sample(np.random.default_rng([9, index, scenes.STREAM]))
    cells = scenes.cells_of(objects)
    for phrasing in scenes.PHRASINGS:
      try:
        text = scenes.caption(rng, objects, phrasing)
      except ValueError:
        continue  # a relation needs two objects, a count two alike
      parsed = scenes.parse_caption(text)
      assert scenes.caption_holds(parsed, cells), (text, cells)
      checked[phrasing] += 1
      if objects:
        recolored = {k: v.copy() for k, v in cells.items()}
        cell = objects[0].position
        recolored["cell_color"][cell] = (recolored["cell_color"][cell] + 1) % 6
        same_elsewhere = any(o.color == recolored["cell_color"][cell]
                             and o.shape == objects[0].shape for o in objects[1:])
        if not same_elsewhere:
          assert not scenes.caption_holds(parsed, recolored), text
  assert min(checked.values()) >= 30, checked


@pytest.mark.parametrize("text, holds", [
    ("a red circle above a blue square", True),
    ("a blue square above a red circle", False),  # the relation reversed
    ("a red circle to the left of a blue square", False),  # same column
    ("a green circle above a blue square", False),  # a wrong color
    ("a red circle", False),  # the square not named: an extra object
    ("a red circle at the top and a blue square at the bottom", True),
    ("a red circle at the top and a blue square in the center", False),  # a wrong place
    ("a small red circle and a blue square", True),
    ("a large red circle and a blue square", False),  # a wrong size
    ("two red circles", False),
    ("nothing", False),
])
def test_the_judge_scores_hand_made_scenes(text, holds):
  """A small red circle at the top, a large blue square at the bottom."""
  cells = _cells((1, "circle", "red", "small"), (7, "square", "blue", "large"))
  assert scenes.caption_holds(scenes.parse_caption(text), cells) == holds


@pytest.mark.parametrize("text, kind", [
    ("an empty scene", "empty"), ("a red circle above a blue square", "relation"),
    ("a green triangle to the left of a red circle, and a blue square at the top",
     "relation"),
    ("two green triangles and a red circle", "counts"),
    ("a red circle at the top and a blue square in the center", "places"),
    ("a red circle at the top and a blue square", "plain"), ("a small red circle", "plain")])
def test_the_phrasing_of_a_caption(text, kind):
  assert scenes.phrasing_of(scenes.parse_caption(text)) == kind


def test_every_phrasing_is_read_back_as_itself():
  rng = np.random.default_rng(0)
  for index in range(200):
    objects = scenes._sample(np.random.default_rng([5, index, scenes.STREAM]))
    for phrasing in scenes.PHRASINGS:
      try:
        text = scenes.caption(rng, objects, phrasing)
      except ValueError:
        continue  # a phrasing that does not fit this scene
      want = "empty" if not objects else phrasing
      assert scenes.phrasing_of(scenes.parse_caption(text)) == want, text


def test_a_described_scene_holds_its_caption_in_every_phrasing():
  rng = np.random.default_rng(1)
  for index in range(100):
    example = scenes.render(7, index, 16)
    cells = {k: example[k] for k in ("cell_shape", "cell_color", "cell_size")}
    for phrasing in ("places", "plain"):
      text = scenes.describe(cells, rng, phrasing)
      assert scenes.caption_holds(scenes.parse_caption(text), cells), text
  assert scenes.describe(_cells(), rng, "places") in scenes.EMPTY_CAPTIONS


def test_objects_found_counts_the_named_objects_a_scene_gets_right():
  """A small red circle at the top, a large blue square at the bottom."""
  cells = _cells((1, "circle", "red", "small"), (7, "square", "blue", "large"))
  found = lambda text: scenes.objects_found(scenes.parse_caption(text), cells)  # noqa: E731
  assert found("a red circle at the top and a blue square at the bottom") == 2
  assert found("a red circle above a blue square") == 2  # the relation aside
  assert found("a red circle at the bottom and a blue square at the bottom") == 1
  assert found("a green circle and a blue triangle") == 0
  assert found("two red circles") == 1 and found("a red circle") == 1  # an extra aside
  assert found("an empty scene") == 0


def test_counts_and_the_empty_scene():
  pair = _cells((0, "triangle", "green", "small"), (8, "triangle", "green", "large"))
  assert scenes.caption_holds(scenes.parse_caption("two green triangles"), pair)
  assert not scenes.caption_holds(scenes.parse_caption("three green triangles"), pair)
  assert not scenes.caption_holds(scenes.parse_caption("a green triangle"), pair)
  empty = _cells()
  assert scenes.caption_holds(scenes.parse_caption("an empty scene"), empty)
  assert not scenes.caption_holds(scenes.parse_caption("an empty scene"), pair)
  with pytest.raises(ValueError, match="names no object"):
    scenes.parse_caption("a dog on a sofa")


def test_the_scenes_configs_store_what_render_gives(tmp_path):
  """The TFDS features of `shapes/scenes_16` take a rendered scene as it is
  (without preparing the 22,000 examples)."""
  builder = shapes_tfds.Shapes(config="scenes_16", data_dir=str(tmp_path))
  example = scenes.render(shapes.SPLIT_SEEDS["train"], 3, 16)
  encoded = builder.info.features.encode_example(example)
  assert encoded["cell_shape"].shape == (9,) and encoded["image"].shape == (16, 16, 3)
  first = next(builder._generate_examples("train"))
  assert first[0] == 0 and first[1]["caption"] == scenes.render(1, 0, 16)["caption"]
  names = {c.name for c in shapes_tfds.Shapes.BUILDER_CONFIGS}
  assert {"scenes_16", "scenes_32", "scenes_64", "scenes_16_to_32"} <= names


def test_the_upsampling_scenes_pair_one_scene_at_two_sizes(tmp_path):
  """`scenes_16_to_32`: the 32x32 scene with its own 16x16 render as
  "low_res" (the same objects and caption; box-downsampled, the large image
  is close to the small one, and far from another scene's)."""
  builder = shapes_tfds.Shapes(config="scenes_16_to_32", data_dir=str(tmp_path))
  index, pair = next(builder._generate_examples("train"))
  alone = scenes.render(1, index, 16)
  np.testing.assert_array_equal(pair["low_res"], alone["image"])
  assert pair["caption"] == alone["caption"] and pair["image"].shape == (32, 32, 3)
  np.testing.assert_array_equal(pair["cell_shape"], alone["cell_shape"])
  builder.info.features.encode_example(pair)
  down = pair["image"].reshape(16, 2, 16, 2, 3).mean((1, 3))
  other = scenes.render(1, index + 1, 16)["image"]
  assert (np.abs(down - alone["image"]).mean()
          < 0.5 * np.abs(down - other.astype(np.float64)).mean())


def test_cell_codes_round_trip_and_name_each_cell_alone():
  cells = _cells((0, "circle", "red", "small"), (4, "triangle", "cyan", "large"))
  codes = scenes.cell_codes(cells)
  assert codes.shape == (9,) and codes[1] == 0 and len(set(codes[[0, 4]])) == 2
  back = scenes.cells_from_codes(codes)
  for name in cells:
    np.testing.assert_array_equal(back[name], cells[name])
  every = scenes.cells_from_codes(np.arange(scenes.CELL_CLASSES))
  triples = {(s, c, z) for s, c, z in zip(every["cell_shape"], every["cell_color"],
                                            every["cell_size"])}
  assert len(triples) == scenes.CELL_CLASSES == 37  # one code per object, and empty


def test_the_relation_probe_tells_a_relation_from_its_opposite():
  """benchmarks/relations.py: each hand-made pair of a red circle (cell 1,
  top middle) and a blue square is counted as the relation asked holds, its
  opposite holds, neither does, or an object is missing or doubled."""
  import sys

  from conftest import ROOT
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import relations
  asked = {"a": (shapes.SHAPES.index("circle"), shapes.COLORS.index("red")),
           "b": (shapes.SHAPES.index("square"), shapes.COLORS.index("blue")), "relation": "above"}
  circle, square = (1, "circle", "red", "small"), "square"
  assert relations.classify(_cells(circle, (7, square, "blue", "large")), asked) == "holds"
  assert relations.classify(_cells((7, "circle", "red", "small"), (1, square, "blue", "large")),
                            asked) == "opposite"
  assert relations.classify(_cells(circle, (0, square, "blue", "large")), asked) == "neither"
  assert relations.classify(_cells(circle), asked) == "not both found"
  two_squares = _cells(circle, (7, square, "blue", "large"), (8, square, "blue", "small"))
  assert relations.classify(two_squares, asked) == "not both found"
  for text, stored in relations.relation_prompts(20):
    parsed = scenes.parse_caption(text)
    assert [r[1] for r in parsed["relations"]] == [stored["relation"]], text
    assert [(o["shape"], o["color"]) for o in parsed["objects"]] == [stored["a"], stored["b"]]
  for text, stored in relations.place_prompts(18):
    (named,) = scenes.parse_caption(text)["objects"]
    assert (named["position"], named["shape"], named["color"]) == (
        stored["cell"], stored["shape"], stored["color"]), text
  assert sorted(a["cell"] for _, a in relations.place_prompts(18)) == sorted(list(range(9)) * 2)
