"""The noisy classifier of `shapes` that classifier guidance uses.

Trained on q_sample(x_0, t) with t uniform, with the same schedule as
configs/shapes_class_cond.py (a classifier trained on another schedule
guides wrongly).

    python -m diffusion_jax.main --mode=train --config=configs/shapes_classifier.py \
        --workdir=runs/shapes_classifier
"""
from diffusion_jax import config_lib


def get_config(arg: str = ""):
  c = config_lib.noisy_classifier("shapes/one_object_16")
  if "quick" in config_lib.variants(arg, ("quick",)):
    config_lib.quick(c)
  return c
