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
