"""Text to image on `shapes`: GLIDE's text-conditional UNet trained on the
dataset's captions ("a small blue square at the top"), with 20% of them
dropped to the empty prompt, as GLIDE, so that classifier-free guidance
works. Sampling defaults are the GLIDE notebook's: guidance scale 3, 100
steps.

The default is sized for a CPU: 16x16 scenes of 0 to 3 objects
("shapes/scenes_16"), whose captions name every object with its places, a
relation between two, counts, or attributes alone; v-prediction, which
learns place where eps-prediction stays at chance (docs/text2im.md), 8,000
steps (about an hour on two CPU cores). `:one_object` is the earlier
model's data and target (one object, eps; benchmarks/place.py). `:32` is
the GPU size: 32x32 scenes of two objects, whose captions add a relation
("a red circle above a small blue square"). `:quick` runs in seconds
(tests, on one-object scenes). `:relations` is the experiment on reading a
relation's direction (docs/text2im.md): a causal text transformer and
relation captions weighed six to one, drawn afresh at each read.

    python -m diffusion_jax.main --mode=train --config=configs/shapes_text2im.py \
        --workdir=runs/text2im
    python -m diffusion_jax.main --mode=sample --workdir=runs/text2im \
        --config.sample.prompts="a red circle|a small blue square at the top"
"""
from diffusion_jax import config_lib

PROMPTS = ("a red circle", "a small blue square at the top",
           "a large green triangle in the bottom left", "a yellow circle on the right",
           "a large magenta square in the center", "a small cyan triangle at the bottom")
PROMPTS_32 = ("a red circle above a blue square",
              "a large green triangle to the left of a small yellow circle",
              "a blue square below a small magenta triangle",
              "a large cyan circle and a small red square",
              "a yellow triangle to the right of a green square",
              "a large magenta square above a small cyan triangle")
PROMPTS_SCENES = ("a red circle in the top left and a blue square in the bottom right",
                  "a green triangle above a yellow circle",
                  "two magenta squares", "three small cyan circles",
                  "a large blue triangle in the center", "an empty scene")


def get_config(arg: str = ""):
  c = config_lib.small_text2im(config_lib.base_config())
  chosen = config_lib.variants(arg, ("quick", "32", "one_object", "relations"))
  _scenes_16(c)
  if "relations" in chosen:
    c.model.xf_causal = True
    c.data.phrasings = "relation:6"
    c.train.keep_every = 2000  # the relation probe along the run
  if "32" in chosen:
    _two_objects_32(c)
  if "one_object" in chosen or "quick" in chosen:
    _one_object_16(c)
  if "quick" in chosen:
    config_lib.quick_text(c)
  return c


def _scenes_16(c) -> None:
  """0 to 3 objects at 16x16, v-prediction, 8,000 steps."""
  config_lib.scenes_text(c)
  c.train.num_steps = 8000
  c.sample.prompts = "|".join(PROMPTS_SCENES)


def _one_object_16(c) -> None:
  """The earlier default: one object at 16x16, eps-prediction, 3,000 steps."""
  c.data.name = "shapes/one_object_16"
  c.model.text_ctx = 16  # the longest one-object caption has 12 GPT-2 tokens
  c.diffusion.parameterization = "eps"
  c.train.num_steps = 3000
  c.sample.prompts = "|".join(PROMPTS)


def _two_objects_32(c) -> None:
  """The GPU size: two objects and their relation, learned sigma, ADM-like widths."""
  c.data.name = "shapes/two_objects_32"
  c.data.batch_size = 128
  c.model.channels = 128
  c.model.channel_mult = (1, 2, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attention_resolutions = (16, 8)
  c.model.num_head_channels = 64
  c.model.learn_sigma = True
  c.diffusion.parameterization = "eps"
  c.model.text_ctx = 24  # the longest two-object caption has 18 tokens
  c.model.xf_width = 256
  c.model.xf_layers = 4
  c.model.xf_heads = 4
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 1000
  c.train.num_steps = 100_000
  c.train.ema_rates = (0.9999,)
  c.sample.ema_rate = 0.9999
  c.sample.prompts = "|".join(PROMPTS_32)
