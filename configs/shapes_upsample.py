"""Upsampling on `shapes`, 16x16 -> 32x32: GLIDE's text-conditional
upsampler (`SuperResText2ImUNet`) for the 16x16 text-to-image model
(configs/shapes_text2im.py). It reads the low-res render of the same scene
("shapes/scenes_16_to_32": exact pairs of scenes of 0 to 3 objects;
`:one_object` the earlier model's "one_object_16_to_32"), upsampled
bilinearly and concatenated to x_t, and the caption (20% dropped).

In training only, half of the low-res inputs are blurred and noised
(`conditioning.degrade_low_res`), so that the upsampler tolerates a base
model's samples; GLIDE's upsampler has no noise-level input, and neither has
ours. GLIDE's upsampler schedule and sampling: a linear schedule, DDIM over
"fast27" from starting noise scaled by 0.997, no guidance.

    python -m diffusion_jax.main --mode=train --config=configs/shapes_upsample.py \
        --workdir=runs/upsample
    python -m diffusion_jax.main --mode=sample --workdir=runs/upsample \
        --config.sample.base_samples=runs/text2im/samples/sampled_003000.npz
"""
from diffusion_jax import config_lib


def get_config(arg: str = ""):
  c = config_lib.small_text2im(config_lib.base_config())
  config_lib.scenes_text(c)
  c.data.name = "shapes/scenes_16_to_32"
  c.model.low_res_size = 16
  c.model.attention_resolutions = (8,)  # 32 -> 16 -> 8: attention at the lowest level
  c.diffusion.schedule = "linear"  # GLIDE's upsampler
  # v, not GLIDE's eps: at high t an eps model must carry x_0 in a residual
  # 1/sqrt(abar) times smaller than its output, and after 1,500 CPU steps
  # ours had not learned to read the low-res image there (samples took
  # their colors from the noise; docs/editing.md). v = sqrt(abar) eps -
  # sqrt(1 - abar) x_0 is about -x_0 at high t, so it learns it at once.
  c.diffusion.parameterization = "v"
  c.data.batch_size = 32  # of 32x32 scenes: twice a 16x16 batch of 64 in pixels
  c.train.num_steps = 1500  # sized for a CPU: upsampling is the easier task
  c.sample.method = "ddim"
  c.sample.steps = "fast27"
  c.sample.temperature = 0.997
  c.sample.guidance_scale = 1.0
  c.sample.prompts = "a red circle|a small blue square at the top"
  chosen = config_lib.variants(arg, ("quick", "one_object"))
  if "one_object" in chosen or "quick" in chosen:  # the earlier model's data; the tests'
    c.data.name = "shapes/one_object_16_to_32"
    c.model.text_ctx = 16
  if "quick" in chosen:
    config_lib.quick_text(c)
    c.model.attention_resolutions = (16,)  # two levels at 32: 32, 16
  return c
