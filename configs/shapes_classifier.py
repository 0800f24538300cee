"""The noisy classifier of `shapes` that classifier guidance uses.

Trained on q_sample(x_0, t) with t uniform, with the same schedule as
configs/shapes_class_cond.py (a classifier trained on another schedule
guides wrongly).

    python -m diffusion_jax.main --mode=train --config=configs/shapes_classifier.py \
        --workdir=runs/shapes_classifier
"""
from diffusion_jax import config_lib


def get_config(arg: str = ""):
  c = config_lib.base_config()
  c.task = "classifier"
  c.data.name = "shapes/one_object_16"
  c.data.batch_size = 64
  c.model.channels = 32
  c.model.channel_mult = (1, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attention_resolutions = (8,)
  c.model.pool_head_channels = 32
  c.optim.lr = 3e-4  # ADM's classifier learning rate
  c.optim.weight_decay = 0.05
  c.optim.warmup_steps = 50
  c.train.num_steps = 2000
  c.train.log_every = 25
  c.train.checkpoint_every = 500
  c.train.ema_rates = (0.995,)
  c.sample.ema_rate = 0.995  # the weights loading (guidance, the data filter) takes
  if "quick" in config_lib.variants(arg, ("quick",)):
    config_lib.quick(c)
  return c
