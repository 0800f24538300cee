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
  c = config_lib.noisy_classifier("digits/16")
  c.data.filter.drop = {"label": ()}  # digits have labels only
  if "quick" in config_lib.variants(arg, ("quick",)):
    config_lib.quick(c)
  return c
