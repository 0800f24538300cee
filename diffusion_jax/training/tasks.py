"""What a config trains: the model, its schedule and its pure train step."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax import schedules
from diffusion_jax.data.pipeline import DatasetInfo
from diffusion_jax.models import factory
from diffusion_jax.training import optimizer as optim_lib
from diffusion_jax.training import steps

TASKS = ("diffusion", "classifier")


@dataclasses.dataclass
class Task:
  """A model with everything needed to train and sample it."""
  kind: str
  model: nn.Module
  schedule: schedules.Schedule
  optimizer: Any
  train_step: Callable
  image_shape: tuple  # (S, S, C)
  num_classes: Optional[int]
  null_label: Optional[int]  # the CFG null class, when trained with one
  variance: str
  parameterization: str
  # Compiled samplers and encoders, by settings (generate.py fills it).
  compiled: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  def init_params(self, rng):
    x = jnp.zeros((1,) + self.image_shape, jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    cond = {}
    if self.kind == "diffusion" and self.num_classes:
      cond["y"] = jnp.zeros((1,), jnp.int32)
    return self.model.init(rng, x, t, **cond)["params"]

  def apply(self, params, x, t, **kwargs):
    return self.model.apply({"params": params}, x, t, **kwargs)


def variance_of(config) -> str:
  return "learned_range" if config.model.learn_sigma else config.diffusion.variance


def make_task(config, info: DatasetInfo) -> Task:
  """Builds the task `config.task` describes for data described by `info`."""
  if config.task not in TASKS:
    raise ValueError(f"unknown task {config.task!r}; choose one of {list(TASKS)}")
  schedule = schedules.make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)
  optimizer = optim_lib.make_optimizer(config.optim)
  shape = (info.image_size, info.image_size, info.channels)
  apply_fn = lambda model: (lambda params, x, t, **kw: model.apply(  # noqa: E731
      {"params": params}, x, t, **kw))
  if config.task == "classifier":
    if not info.num_classes:
      raise ValueError(f"a classifier needs labelled data; {config.data.name!r} has none")
    model = factory.make_classifier(config.model, info.num_classes)
    step = steps.make_classifier_step(apply_fn(model), schedule, optimizer,
                                      ema_warmup=config.train.ema_warmup)
    return Task("classifier", model, schedule, optimizer, step, shape, info.num_classes,
                None, "fixed_small", "eps")
  conditional = bool(config.model.class_conditional)
  if conditional and not info.num_classes:
    raise ValueError(f"model.class_conditional needs labels; {config.data.name!r} has none")
  num_classes = info.num_classes if conditional else None
  null_class = conditional and config.train.label_dropout > 0
  null_label = num_classes if null_class else None
  model = factory.make_unet(config.model, info.channels, num_classes, null_class)
  variance = variance_of(config)
  step = steps.make_diffusion_step(
      apply_fn(model), schedule, optimizer,
      parameterization=config.diffusion.parameterization, variance=variance,
      vlb_weight=config.diffusion.vlb_weight, class_conditional=conditional,
      label_dropout=config.train.label_dropout, null_label=null_label,
      ema_warmup=config.train.ema_warmup)
  return Task("diffusion", model, schedule, optimizer, step, shape, num_classes,
              null_label, variance, config.diffusion.parameterization)
