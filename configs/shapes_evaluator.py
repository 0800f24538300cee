"""The clean-image evaluator of `shapes`: every attribute of every object.

It predicts shape, color, size and position (and, at 32x32 with two
objects, the same of the second object) from clean images, to judge samples;
it never sees x_t and never guides. Its trained weights ship with the
package (`diffusion_jax/evaluation/weights/shapes16`, `shapes32`, `scenes16`)
and load by name: `evaluation.load_evaluator("shapes16")`. `:scenes` reads
a whole scene of 0 to 3 objects (`shapes/scenes_16`): for each of the 9
cells, empty or which shape, color and size (`scenes.CELL_CLASSES`).

    python -m diffusion_jax.main --mode=train --config=configs/shapes_evaluator.py \
        --workdir=runs/evaluator_shapes16
    python -m diffusion_jax.main --mode=train --config=configs/shapes_evaluator.py:32 \
        --workdir=runs/evaluator_shapes32
    python -m diffusion_jax.main --mode=train --config=configs/shapes_evaluator.py:scenes \
        --workdir=runs/evaluator_scenes16
"""
from diffusion_jax import config_lib


def get_config(arg: str = ""):
  c = config_lib.clean_evaluator("shapes/one_object_16", batch_size=128, num_steps=1500)
  chosen = config_lib.variants(arg, ("32", "scenes", "quick"))
  if "32" in chosen and "scenes" in chosen:
    raise ValueError("choose one of '32' and 'scenes'")
  if "32" in chosen:  # two objects: both objects' attributes
    c.data.name = "shapes/two_objects_32"
    c.train.num_steps = 3000
  if "scenes" in chosen:  # 9 cells x 37 classes from the 4x4 map's features
    c.data.name = "shapes/scenes_16"
    c.model.feature_dim = 256
    c.train.num_steps = 6000  # at 3,000 one cell's shape was 0.9895 on fresh scenes
  if "quick" in chosen:
    config_lib.quick(c)
  return c
