"""The input pipeline: deterministic, per-process, filterable batches.

`ImageData.local_batch(step)` is a pure function of (seed, step): the
examples are a grain `MapDataset` (shuffled per epoch from the seed, repeated)
read by index, so a resumed run sees exactly the batches an uninterrupted one
would. Process p of P reads only its own slice [p * B/P, (p + 1) * B/P) of
each global batch of B; `parallel.global_batch` assembles the global arrays.
"""
from __future__ import annotations

import concurrent.futures
import functools
from typing import Callable, Iterator, Optional

import grain
import jax
import numpy as np
from absl import logging

from diffusion_jax.data import builders, scenes
from diffusion_jax.data.info import DatasetInfo, to_model_image  # noqa: F401 (re-exported)


def dataset_info(data_config, builder, num_examples: int) -> DatasetInfo:
  """The model-facing description of the data (config sizes override the data's)."""
  meta = builders.metadata(builder)
  size = data_config.image_size or meta["image_size"]
  channels = data_config.channels or meta["channels"]
  return DatasetInfo(size, channels, meta["num_classes"], num_examples,
                     tuple(meta["attributes"].items()), bool(meta["has_caption"]))


def load_source(data_config, split: str = "train"):
  """(random-access source of `split`, DatasetInfo) of `config.data`."""
  builder = builders.load_builder(data_config.name, data_config.data_dir or None,
                                  image_size=data_config.image_size)
  source = builder.as_data_source(split=split)
  return source, dataset_info(data_config, builder, len(source))


def split_examples(data_config, split: str = "test", num: Optional[int] = None,
                   data_dir: Optional[str] = None) -> tuple[np.ndarray, list[dict]]:
  """(images [N, S, S, C] float32 in [-1, 1] at the config's size and
  channels, the N raw examples) of the first `num` examples of `split`
  (all of them by default); `data_dir` overrides the config's."""
  if data_dir:
    data_config = data_config.copy_and_resolve_references()
    data_config.data_dir = data_dir
  source, info = load_source(data_config, split)
  examples = [source[i] for i in range(len(source) if num is None else min(num, len(source)))]
  images = np.stack([to_model_image(e["image"], info.image_size, info.channels)
                     for e in examples])
  return images, examples


def read_info(data_config) -> DatasetInfo:
  """The `DatasetInfo` of `config.data` (prepares an embedded dataset on first use)."""
  return load_source(data_config)[1]


def default_example_fn(example) -> dict:
  """The class label, when the data has one (the pipeline's default fields)."""
  return {"label": np.int32(example["label"])} if "label" in example else {}


class _Subset:
  """Random access to the chosen `indices` of a data source."""

  def __init__(self, source, indices: np.ndarray):
    self._source, self._indices = source, indices

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i: int):
    return self._source[int(self._indices[i])]


def keep_by_predicate(source, predicate: Optional[Callable[[dict], bool]],
                      drop_fn: Optional[Callable[[list], np.ndarray]] = None,
                      chunk: int = 512) -> np.ndarray:
  """Indices of the examples that `predicate` keeps and `drop_fn` does not flag.

  Args:
    source: a random-access data source.
    chunk: examples per call of `drop_fn`.
    predicate: example -> True to keep (labels, attributes), or None.
    drop_fn: a list of examples -> bool [n], True to drop (e.g. a trained
      classifier's verdict), or None.
  """
  n = len(source)
  if predicate is None and drop_fn is None:
    return np.arange(n)
  keep = []
  for start in range(0, n, chunk):
    examples = [source[i] for i in range(start, min(n, start + chunk))]
    mask = np.array([predicate(e) if predicate else True for e in examples])
    if drop_fn is not None:
      mask &= ~np.asarray(drop_fn(examples), bool)
    keep.extend(start + np.flatnonzero(mask))
  return np.asarray(keep, np.int64)


def attribute_predicate(filter_config) -> Optional[Callable[[dict], bool]]:
  """Drops examples whose attribute is in a list: `drop={"label": (3,), "color": (0,)}`."""
  rules = {k: {int(v) for v in values} for k, values in dict(filter_config.drop).items()
           if values}
  if not rules:
    return None

  def predicate(example):
    for key, dropped in rules.items():
      if key not in example:
        raise ValueError(f"data.filter.drop names {key!r}, which the examples lack "
                         f"(they have {sorted(example)})")
      if int(example[key]) in dropped:
        return False
    return True
  return predicate


def recaption_fn(data_config, source) -> Optional[Callable[[dict, np.random.Generator], dict]]:
  """(example, rng) -> example with a fresh caption, by `data.phrasings`
  (None when it is ""); the rng is grain's, seeded by the pipeline's seed and
  the example's place in the stream, so a resumed run reads the same captions.

  Raises:
    ValueError: bad weights, or data without stored scene cells.
  """
  if not data_config.phrasings:
    return None
  weights = scenes.parse_phrasing_weights(data_config.phrasings)
  if len(source) and "cell_shape" not in source[0]:
    raise ValueError(f"data.phrasings re-captions scenes from their stored cells; "
                     f"{data_config.name} has none (use a shapes/scenes_* config)")
  return functools.partial(scenes.recaptioned, weights=weights)


class ImageData:
  """Batches of {"image": float32 [b, S, S, C], **example_fn(example)} for this process.

  Args:
    data_config: `config.data`.
    seed: shuffling seed.
    global_batch_size: B over all processes.
    split: the split to read.
    example_fn: an example's fields beyond the image, as numpy values (the
      model spec's conditioning inputs and targets); default: the label.
    drop_fn: flags examples to leave out (a list of examples -> bool [n]).
    process_index, process_count: this process's place (default: JAX's).
  """

  def __init__(self, data_config, *, seed: int, global_batch_size: int,
               split: str = "train",
               example_fn: Optional[Callable[[dict], dict]] = None,
               drop_fn: Optional[Callable[[list], np.ndarray]] = None,
               process_index: Optional[int] = None, process_count: Optional[int] = None):
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % self.process_count:
      raise ValueError(f"batch size {global_batch_size} is not divisible by the "
                       f"{self.process_count} processes")
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // self.process_count
    source, self.info = load_source(data_config, split)
    indices = keep_by_predicate(source, attribute_predicate(data_config.filter), drop_fn)
    self.dropped = len(source) - len(indices)
    if self.dropped:
      logging.info("data filter: dropped %d of %d %s examples", self.dropped,
                   len(source), split)
    if len(indices) == 0:
      raise ValueError("data filter dropped every example")
    size, channels = self.info.image_size, self.info.channels
    fields = example_fn or default_example_fn
    dataset = grain.MapDataset.source(_Subset(source, indices)).seed(seed).shuffle().repeat()
    recaption = recaption_fn(data_config, source)
    if recaption is not None:
      dataset = dataset.random_map(recaption)
    self.dataset = dataset.map(lambda e: self._prepare(e, size, channels, fields))

  @staticmethod
  def _prepare(example, image_size, channels, example_fn) -> dict:
    return {"image": to_model_image(example["image"], image_size, channels),
            **example_fn(example)}

  def local_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's share of global batch number `step`."""
    start = step * self.global_batch_size + self.process_index * self.local_batch_size
    examples = [self.dataset[start + j] for j in range(self.local_batch_size)]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}

  def batches(self, start_step: int, prefetch: int = 2) -> Iterator[dict]:
    """local_batch(start_step), local_batch(start_step + 1), ... read ahead in a thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      pending = [pool.submit(self.local_batch, start_step + i) for i in range(prefetch)]
      step = start_step + prefetch
      while True:
        batch = pending.pop(0).result()
        pending.append(pool.submit(self.local_batch, step))
        step += 1
        yield batch
