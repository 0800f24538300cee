"""The base config every experiment in `configs/` starts from.

A config file's `get_config(arg)` calls `base_config()` and changes what it
needs; `arg` names a variant ("quick" runs in seconds on a CPU, for tests and
notebooks). Durations are `*_steps`/`*_every` in train steps.
"""
from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.resume = True  # False: start over in a workdir that holds another run
  c.task = "diffusion"  # or "classifier" (the noisy classifier for guidance)

  c.data = ml_collections.ConfigDict()
  c.data.name = "shapes"  # "shapes/two_objects_16", "digits/16", or a TFDS name
  c.data.data_dir = ""  # "" = the default cache (DIFFUSION_JAX_DATA_DIR)
  c.data.image_size = 0  # 0 = the dataset's own size
  c.data.channels = 0  # 0 = the dataset's own channels
  c.data.batch_size = 64  # global, over all devices and processes
  c.data.filter = ml_collections.ConfigDict()
  c.data.filter.drop = ml_collections.ConfigDict(  # attribute -> values to drop
      {"label": (), "shape": (), "color": (), "size": (), "position": ()})
  # Drop what a trained noisy classifier (its training workdir) predicts, at
  # t = 0, to be one of `classifier_drop_labels` with probability > threshold.
  c.data.filter.classifier_workdir = ""
  c.data.filter.classifier_drop_labels = ()
  c.data.filter.classifier_threshold = 0.5

  c.model = ml_collections.ConfigDict()
  c.model.channels = 64
  c.model.channel_mult = (1, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attention_resolutions = (8,)  # feature-map sizes in pixels
  c.model.num_heads = 4
  c.model.num_head_channels = -1  # > 0 overrides num_heads
  c.model.dropout = 0.0
  c.model.use_scale_shift_norm = True
  c.model.resblock_updown = True
  c.model.num_groups = 32
  c.model.learn_sigma = False
  c.model.class_conditional = True
  c.model.pool_head_channels = 32  # the classifier's attention pooling
  c.model.dtype = "float32"  # compute dtype; params stay float32
  c.model.remat = False

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = "cosine"
  c.diffusion.num_timesteps = 1000
  c.diffusion.parameterization = "eps"
  c.diffusion.variance = "fixed_small"  # used when model.learn_sigma is False
  c.diffusion.vlb_weight = 0.001  # lambda of the hybrid loss

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 2e-4
  c.optim.warmup_steps = 100
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 1.0

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 10_000
  c.train.log_every = 50
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3  # the last N
  c.train.keep_every = 0  # and every step divisible by K (0: none)
  c.train.max_nonfinite_steps = 20  # stop after this many skipped steps in a row
  c.train.sample_every = 0  # 0 = only at the end
  c.train.ema_rates = (0.999,)
  c.train.ema_warmup = True  # decay min(rate, (1 + step) / (10 + step))
  c.train.label_dropout = 0.1  # CFG: labels replaced by the null class

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1 = all devices fsdp leaves
  c.mesh.fsdp = 1

  c.sample = ml_collections.ConfigDict()
  c.sample.method = "ddim"
  c.sample.steps = "50"  # respacing spec
  c.sample.eta = 0.0
  c.sample.guidance_scale = 1.0  # classifier-free, GLIDE's s (1 = off)
  c.sample.clip_denoised = True
  c.sample.per_class = 8  # columns of the grid, one row per class
  c.sample.labels = ()  # rows to draw; () = every class
  c.sample.seed = 0
  c.sample.use_ema = True
  c.sample.ema_rate = 0.999
  c.sample.output = ""  # "" = WORKDIR/samples/sampled_STEP
  return c


def quick(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks model, data and steps so a run takes seconds on a CPU."""
  c.data.batch_size = 8
  c.model.channels = 16
  c.model.channel_mult = (1, 2)
  c.model.num_res_blocks = 1
  c.model.attention_resolutions = (8,)
  c.model.num_groups = 8
  c.model.pool_head_channels = 16
  c.diffusion.num_timesteps = 100
  c.optim.warmup_steps = 2
  c.train.num_steps = 4
  c.train.log_every = 2
  c.train.checkpoint_every = 2
  c.sample.steps = "4"
  c.sample.per_class = 2
  return c
