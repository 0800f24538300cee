"""The input pipeline: deterministic in (seed, step), disjoint per process,
filters that really keep examples out, and model-ready images."""
import logging

import numpy as np
import pytest

from conftest import quick_config
from diffusion_jax.data import pipeline


def make_data(seed=0, batch=8, process_index=0, process_count=1, **overrides):
  config = quick_config(**overrides)
  return pipeline.ImageData(config.data, seed=seed, global_batch_size=batch,
                            process_index=process_index, process_count=process_count)


@pytest.fixture(scope="module")
def data():
  return make_data()


def test_batches_are_a_function_of_seed_and_step(data):
  again = make_data()
  for step in (0, 1, 5000):  # 5000 * 8 examples: several epochs in
    a, b = data.local_batch(step), again.local_batch(step)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(data.local_batch(0)["image"], data.local_batch(1)["image"])
  other = make_data(seed=1)
  assert not np.array_equal(data.local_batch(0)["image"], other.local_batch(0)["image"])
  prefetched = data.batches(3)
  for step in (3, 4, 5):
    np.testing.assert_array_equal(next(prefetched)["image"], data.local_batch(step)["image"])


def test_model_ready_images_and_labels(data):
  batch = data.local_batch(0)
  assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.float32
  assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
  assert batch["image"].std() > 0.05
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (8,)
  assert data.info.num_classes == 18 and data.info.image_size == 16


def test_processes_read_disjoint_slices_of_the_global_batch(data):
  global_data = make_data(batch=8)
  halves = [make_data(batch=8, process_index=p, process_count=2) for p in range(2)]
  for step in (0, 7):
    parts = [h.local_batch(step) for h in halves]
    assert parts[0]["image"].shape[0] == 4
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]),
                                  global_data.local_batch(step)["image"])
    flat = [p["image"].reshape(4, -1) for p in parts]
    assert not any((a == b).all() for a in flat[0] for b in flat[1])


def test_filtered_classes_never_reach_a_batch(caplog):
  drop = (0, 3, 17)
  with caplog.at_level(logging.INFO):
    config = quick_config()
    config.data.filter.drop.label = drop
    filtered = pipeline.ImageData(config.data, seed=0, global_batch_size=64)
  seen = np.concatenate([filtered.local_batch(s)["label"] for s in range(100)])
  assert not set(drop) & set(seen.tolist())
  assert len(set(seen.tolist())) == 18 - len(drop)
  # Shapes labels are uniform over 18 classes: about 3/18 of 20000 dropped.
  assert 2800 < filtered.dropped < 3900
  assert f"dropped {filtered.dropped} of" in caplog.text


def test_attribute_filter_by_color_and_bad_attribute():
  config = quick_config()
  config.data.filter.drop.color = (0,)  # red
  filtered = pipeline.ImageData(config.data, seed=0, global_batch_size=64)
  labels = np.concatenate([filtered.local_batch(s)["label"] for s in range(50)])
  assert not np.any(labels % 6 == 0)  # label = shape * 6 + color
  digits = quick_config(**{"data.name": "digits/16"})
  digits.data.filter.drop.color = (0,)
  with pytest.raises(ValueError, match="'color'"):
    pipeline.ImageData(digits.data, seed=0, global_batch_size=8)


def test_resizing_and_channel_conversion():
  gray = np.arange(64, dtype=np.uint8).reshape(8, 8, 1) * 4
  out = pipeline.to_model_image(gray, 16, 3)
  assert out.shape == (16, 16, 3)
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  assert out.min() >= -1 and out.max() <= 1
  rgb = np.full((10, 12, 3), 255, np.uint8)
  np.testing.assert_allclose(pipeline.to_model_image(rgb, 4, 1), 1.0)


def _scenes_data(monkeypatch, phrasings, seed=0, batch=32):
  """ImageData over 64 rendered scenes (not the 22,000 of the TFDS config)."""
  from diffusion_jax.data import scenes
  source = [scenes.render(1, i) for i in range(64)]
  _, info = pipeline.load_source(quick_config().data)  # 16x16 RGB, as the scenes
  monkeypatch.setattr(pipeline, "load_source", lambda data_config, split="train": (source, info))
  config = quick_config(**{"data.phrasings": phrasings})
  fields = lambda e: {"caption": e["caption"], "num_objects": e["num_objects"],  # noqa: E731
                      **{k: e[k] for k in ("cell_shape", "cell_color", "cell_size")}}
  return pipeline.ImageData(config.data, seed=seed, global_batch_size=batch, example_fn=fields,
                            process_index=0, process_count=1)


def _text(caption):
  return caption.decode() if isinstance(caption, bytes) else str(caption)


def test_fresh_captions_follow_the_phrasing_weights_and_hold_for_their_scenes(monkeypatch):
  from diffusion_jax.data import scenes
  data = _scenes_data(monkeypatch, "relation:1,places:0,counts:0,plain:0")
  again = _scenes_data(monkeypatch, "relation:1,places:0,counts:0,plain:0")
  captions = set()
  for step in range(16):  # 8 epochs of the 64 scenes
    batch = data.local_batch(step)
    assert list(batch["caption"]) == list(again.local_batch(step)["caption"])  # resumable
    for i, text in enumerate(batch["caption"]):
      parsed = scenes.parse_caption(text)
      cells = {k: batch[k][i] for k in ("cell_shape", "cell_color", "cell_size")}
      assert scenes.caption_holds(parsed, cells), text
      if batch["num_objects"][i] >= 2:  # only relations where one fits
        assert scenes.phrasing_of(parsed) == "relation", text
      captions.add(text)
  assert len(captions) > 64  # a scene is captioned afresh at each read
  stored = _scenes_data(monkeypatch, "")
  batch = stored.local_batch(0)
  phrasings = {scenes.phrasing_of(scenes.parse_caption(_text(t))) for t in batch["caption"]}
  assert len(phrasings) >= 3  # the stored captions, in every phrasing


@pytest.mark.parametrize("phrasings, message", [
    ("relation:x", "not name:weight"), ("colour:2", "'colour' is not one of"),
    ("relation:-1", "negative"), ("relation:0,places:0,counts:0,plain:0", "every weight is zero")])
def test_bad_phrasing_weights_are_one_line_errors(phrasings, message):
  from diffusion_jax.data import scenes
  with pytest.raises(ValueError, match=message):
    scenes.parse_phrasing_weights(phrasings)


def test_phrasing_weights_need_scenes_with_their_cells():
  config = quick_config(**{"data.phrasings": "relation:3"})  # one-object shapes
  with pytest.raises(ValueError, match="has none"):
    pipeline.ImageData(config.data, seed=0, global_batch_size=8)
