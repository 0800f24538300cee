"""The clean-image evaluator of `shapes`: every attribute of every object.

It predicts shape, color, size and position (and, at 32x32 with two
objects, the same of the second object) from clean images, to judge samples;
it never sees x_t and never guides. Its trained weights ship with the
package (`diffusion_jax/evaluation/weights/shapes16`, `shapes32`) and load
by name: `evaluation.load_evaluator("shapes16")`.

    python -m diffusion_jax.main --mode=train --config=configs/shapes_evaluator.py \
        --workdir=runs/evaluator_shapes16
    python -m diffusion_jax.main --mode=train --config=configs/shapes_evaluator.py:32 \
        --workdir=runs/evaluator_shapes32
"""
from diffusion_jax import config_lib


def get_config(arg: str = ""):
  c = config_lib.clean_evaluator("shapes/one_object_16", batch_size=128, num_steps=1500)
  chosen = config_lib.variants(arg, ("32", "quick"))
  if "32" in chosen:  # two objects: both objects' attributes
    c.data.name = "shapes/two_objects_32"
    c.train.num_steps = 3000
  if "quick" in chosen:
    config_lib.quick(c)
  return c
