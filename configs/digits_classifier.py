"""The noisy classifier of `digits` that classifier guidance uses.

Trained on q_sample(x_0, t) with t uniform, with the schedule of
configs/digits_class_cond.py (cosine, 1000 steps): a classifier trained on
another schedule is refused as a guide.

    python -m diffusion_jax.main --mode=train --config=configs/digits_classifier.py \
        --workdir=runs/digits_classifier
    python -m diffusion_jax.main --mode=sample --config=configs/digits_class_cond.py:uncond \
        --workdir=runs/digits_uncond --config.sample.classifier=runs/digits_classifier \
        --config.sample.classifier_scale=10
"""
from diffusion_jax import config_lib


def get_config(arg: str = ""):
  c = config_lib.base_config()
  c.task = "classifier"
  c.data.name = "digits/16"
  c.data.batch_size = 64
  c.data.filter.drop = {"label": ()}  # digits have labels only
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
