"""ADM's published class-conditional ImageNet 64x64 settings (Dhariwal & Nichol).

For users with the data prepared as the TFDS dataset `imagenet2012` (or
`imagenet_resized/64x64`): channels 192, mult (1,2,3,4), 3 res blocks,
attention at 32/16/8, 64 channels per head in the new qkv order
(`--use_new_attention_order True`, as the released 64x64_diffusion.pt),
dropout 0.1, learned sigma with the hybrid loss, cosine schedule, 1000
steps, scale-shift norm, resblock up/down, EMA 0.9999, AdamW lr 3e-4 and
batch 2048 for 540K steps (the paper's Table 11); sampled with 250
respaced steps. `tests/test_openai.py` holds this config's network against
the released checkpoint's keys and `diffusion_jax.openai`'s 64x64 kind.
`:quick` shrinks everything to run on a CPU with `mnist` mock data.
"""
from diffusion_jax import config_lib


def get_config(arg: str = ""):
  c = config_lib.base_config()
  c.data.name = "imagenet_resized/64x64"
  c.data.image_size = 64
  c.data.channels = 3
  c.data.batch_size = 2048
  c.model.channels = 192
  c.model.channel_mult = (1, 2, 3, 4)
  c.model.num_res_blocks = 3
  c.model.attention_resolutions = (32, 16, 8)
  c.model.num_head_channels = 64
  c.model.attention_order = "new"
  c.model.dropout = 0.1
  c.model.learn_sigma = True
  c.model.dtype = "bfloat16"
  c.diffusion.schedule = "cosine"
  c.diffusion.num_timesteps = 1000
  c.optim.lr = 3e-4
  c.optim.warmup_steps = 0
  c.optim.grad_clip = 0.0
  c.train.num_steps = 540_000
  c.train.log_every = 100
  c.train.checkpoint_every = 10_000
  c.train.sample_every = 10_000
  c.train.ema_rates = (0.9999,)
  c.train.label_dropout = 0.0  # ADM guides with a classifier, not CFG
  c.sample.method = "ddpm"
  c.sample.steps = "250"
  c.sample.ema_rate = 0.9999
  c.sample.per_class = 4
  c.sample.labels = (1, 88, 207, 279, 360, 387, 417, 980)
  if "quick" in config_lib.variants(arg, ("quick",)):
    config_lib.quick(c)
    c.data.image_size = 16
    c.model.learn_sigma = True
    c.model.dtype = "float32"
    c.sample.labels = (0, 1)
  return c
