"""Inpainting on `shapes`: GLIDE's inpainting model (`InpaintText2ImUNet`),
text-conditional, trained with a random box or free-form brush stroke of
each scene erased (`masks.random_masks`) and 20% of the captions dropped to
the empty prompt, so that classifier-free guidance works. The text-to-image
model's size otherwise (`config_lib.small_text2im`).

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
  c.data.name = "shapes/one_object_16"
  c.model.inpaint = True
  # GLIDE fine-tuned its base model into the inpainting model: start from
  # the text-to-image model with `--config.train.init_from=runs/text2im`
  # (the extra input channels start at zero), which needs fewer steps.
  c.train.num_steps = 1500
  c.sample.guidance_scale = 5.0  # GLIDE's inpainting notebook
  c.sample.prompts = "a red circle|a blue square|a green triangle"
  if "quick" in config_lib.variants(arg, ("quick",)):
    config_lib.quick_text(c)
  return c
