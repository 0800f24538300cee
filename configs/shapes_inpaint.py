"""Inpainting on `shapes`: GLIDE's inpainting model (`InpaintText2ImUNet`),
text-conditional, trained on the text-to-image model's scenes (0 to 3
objects, v-prediction) with a random box, a free-form brush stroke or a
grid cell of each scene erased (`masks.random_masks`: cells are mostly an
object's, so that it learns to draw a named object and to leave a cell the
caption does not name empty) and 20% of the captions dropped to the empty
prompt, so that classifier-free guidance works. The text-to-image model's
size otherwise (`config_lib.small_text2im`). `:one_object` is the earlier
model's data (one object, eps).

The network sees [x_t, image * mask, mask]; sampling pastes the known
pixels into each predicted x_0 and returns them exactly (docs/editing.md).
GLIDE's inpainting notebook samples with 100 steps and guidance scale 5.

    python -m diffusion_jax.main --mode=train --config=configs/shapes_inpaint.py \
        --workdir=runs/inpaint
    python -m diffusion_jax.main --mode=sample --workdir=runs/inpaint \
        --config.sample.init_image=scene.png --config.sample.mask=mask.png \
        --config.sample.prompts="a red circle"
"""
from diffusion_jax import config_lib


def get_config(arg: str = ""):
  c = config_lib.small_text2im(config_lib.base_config())
  config_lib.scenes_text(c)
  c.model.inpaint = True
  # GLIDE fine-tuned its base model into the inpainting model: start from
  # the text-to-image model with `--config.train.init_from=runs/text2im`
  # (the extra input channels start at zero), which needs fewer steps.
  c.train.num_steps = 2000
  c.sample.guidance_scale = 5.0  # GLIDE's inpainting notebook
  c.sample.prompts = "a red circle|a blue square|a green triangle"
  chosen = config_lib.variants(arg, ("quick", "one_object"))
  if "one_object" in chosen or "quick" in chosen:  # the tests' data
    c.data.name = "shapes/one_object_16"
    c.model.text_ctx = 16
    c.diffusion.parameterization = "eps"
    c.train.num_steps = 1500
  if "quick" in chosen:
    config_lib.quick_text(c)
  return c
