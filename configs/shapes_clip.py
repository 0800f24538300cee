"""GLIDE's noised CLIP for `shapes`: an image tower that reads x_t and t, and
a text tower, trained contrastively on noised scenes (the text-to-image
model's schedule, t uniform) against their captions: scenes of 0 to 3
objects (`:one_object`, the earlier model's data). It guides the
text-to-image model (`sample.clip`, CLIP guidance); it must share that
model's schedule and image size.

    python -m diffusion_jax.main --mode=train --config=configs/shapes_clip.py \
        --workdir=runs/clip
"""
from diffusion_jax import config_lib


def get_config(arg: str = ""):
  c = config_lib.base_config()
  c.task = "clip"
  c.data.name = "shapes/scenes_16"  # the text-to-image model's scenes
  c.data.batch_size = 128
  c.model.clip.text_ctx = 32  # CLIP tokens with start and end; the longest caption has 27
  c.model.clip.text_width = 64
  c.model.clip.text_layers = 2
  c.model.clip.text_heads = 4
  c.model.clip.patch_size = 4
  c.model.clip.image_width = 64
  c.model.clip.image_layers = 3
  c.model.clip.image_heads = 4
  c.model.clip.embed_dim = 64
  c.optim.lr = 5e-4
  c.optim.weight_decay = 0.05
  c.optim.warmup_steps = 100
  c.train.num_steps = 3000
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.ema_rates = (0.999,)
  c.sample.ema_rate = 0.999  # the weights loading and export take
  chosen = config_lib.variants(arg, ("quick", "32", "one_object"))
  if "one_object" in chosen or "quick" in chosen:  # the earlier model's data; the tests'
    c.data.name = "shapes/one_object_16"
    c.model.clip.text_ctx = 16  # the longest one-object caption has 14 CLIP tokens
  if "32" in chosen:  # for the text-to-image model's :32 (two objects, relations)
    c.data.name = "shapes/two_objects_32"
    c.model.clip.text_ctx = 24
    for tower in ("text", "image"):
      c.model.clip[f"{tower}_width"] = 256
      c.model.clip[f"{tower}_layers"] = 4
    c.model.clip.embed_dim = 256
  if "quick" in chosen:
    config_lib.quick(c)
    for tower in ("text", "image"):
      c.model.clip[f"{tower}_width"] = 16
      c.model.clip[f"{tower}_layers"] = 1
      c.model.clip[f"{tower}_heads"] = 2
    c.model.clip.embed_dim = 16
  return c
