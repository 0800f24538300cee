"""The clean-image evaluator of `digits`: which digit an image shows.

Its trained weights ship with the package
(`diffusion_jax/evaluation/weights/digits16`) and load by name:
`evaluation.load_evaluator("digits16")`.

    python -m diffusion_jax.main --mode=train --config=configs/digits_evaluator.py \
        --workdir=runs/evaluator_digits16
"""
from diffusion_jax import config_lib


def get_config(arg: str = ""):
  c = config_lib.clean_evaluator("digits/16", batch_size=64, num_steps=1000)
  c.data.filter.drop = {"label": ()}  # digits have labels only
  if "quick" in config_lib.variants(arg, ("quick",)):
    config_lib.quick(c)
  return c
