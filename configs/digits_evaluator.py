"""The clean-image evaluator of `digits`: which digit an image shows.

Its trained weights ship with the package
(`diffusion_jax/evaluation/weights/digits16`) and load by name:
`evaluation.load_evaluator("digits16")`.

    python -m diffusion_jax.main --mode=train --config=configs/digits_evaluator.py \
        --workdir=runs/evaluator_digits16
"""
from diffusion_jax import config_lib


def get_config(arg: str = ""):
  c = config_lib.base_config()
  c.task = "evaluator"
  c.data.name = "digits/16"
  c.data.batch_size = 64
  c.data.filter.drop = {"label": ()}  # digits have labels only
  c.model.channels = 32
  c.model.feature_dim = 128
  c.model.num_groups = 8
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.01
  c.optim.warmup_steps = 50
  c.train.num_steps = 1000
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.ema_rates = (0.99,)
  c.sample.ema_rate = 0.99  # the weights loading and export take
  if "quick" in config_lib.variants(arg, ("quick",)):
    config_lib.quick(c)
  return c
