"""The base config every experiment in `configs/` starts from.

A config file's `get_config(arg)` calls `base_config()` and changes what it
needs; `arg` names a variant ("quick" runs in seconds on a CPU, for tests and
notebooks). Durations are `*_steps`/`*_every` in train steps.
"""
from __future__ import annotations

import ml_collections
import numpy as np


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.resume = True  # False: start over in a workdir that holds another run
  # "classifier" (noisy, for guidance), "evaluator" (clean), "clip" (noised CLIP)
  c.task = "diffusion"

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
  # Scenes only: "" keeps each example's stored caption; "relation:3,plain:1"
  # draws a fresh caption each time an example is read, each phrasing weighed
  # so (those not named weigh 1; `scenes.parse_phrasing_weights`).
  c.data.phrasings = ""

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
  c.model.feature_dim = 128  # the evaluator's feature vector
  c.model.dtype = "float32"  # compute dtype; params stay float32
  c.model.remat = False
  # How a fused qkv projection splits into heads: "legacy" (head-major,
  # guided-diffusion's QKVAttentionLegacy and GLIDE) or "new" (q, k, v first:
  # guided-diffusion's QKVAttention, its 64x64 model's order).
  c.model.attention_order = "legacy"
  # The attention kernel: "" ours; "xla" or "cudnn" jax.nn.dot_product_attention
  # (cudnn: NVIDIA's fused kernel, bfloat16 compute only). The same function.
  c.model.attention_impl = ""
  # GLIDE's text model (captions, GPT-2 BPE): text_ctx > 0 makes a
  # text-to-image UNet; train.label_dropout then drops captions (CFG).
  c.model.text_ctx = 0
  c.model.xf_width = 128
  c.model.xf_layers = 2
  c.model.xf_heads = 4
  c.model.xf_final_ln = True
  c.model.xf_padding = True
  c.model.xf_causal = False  # True: each token attends to those before it only (not GLIDE's)
  # GLIDE's inpainting model: a known image and mask as extra inputs (random
  # training masks); low_res_size > 0 makes an upsampler from that size.
  c.model.inpaint = False
  c.model.low_res_size = 0
  # Two input channels holding each pixel's row and column in [-1, 1]
  # (CoordConv, Liu et al. 2018): an absolute position signal, which the
  # convolutions and the position-free attention otherwise only get from
  # the zero padding at the borders. Off in OpenAI's models.
  c.model.coordinates = False
  # The noised CLIP (task "clip"): GLIDE's clip/config.yaml at a small size.
  c.model.clip = ml_collections.ConfigDict(dict(
      text_ctx=24, text_width=64, text_layers=2, text_heads=4, patch_size=4,
      image_width=64, image_layers=2, image_heads=4, embed_dim=64))

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = "cosine"
  c.diffusion.num_timesteps = 1000
  c.diffusion.parameterization = "eps"
  c.diffusion.variance = "fixed_small"  # used when model.learn_sigma is False
  c.diffusion.vlb_weight = 0.001  # lambda of the hybrid loss
  # "uniform", or "loss_second_moment": importance-sampled timesteps by the
  # recent loss at each t (Improved DDPM's choice for the L_vlb objective).
  c.diffusion.timestep_sampler = "uniform"
  # The training recipe (docs/recipe.md); the defaults are 2021's (ADM).
  # "log_normal": EDM's ln sigma ~ N(mean, std^2) over the discrete steps.
  c.diffusion.log_normal_mean = -1.2
  c.diffusion.log_normal_std = 1.2
  # The weight of each example's MSE: "none" (L_simple), "min_snr" (Hang et
  # al. 2023, min(SNR, snr_gamma) on x_0) or "edm" (Karras et al. 2022; v, x0).
  c.diffusion.loss_weighting = "none"
  c.diffusion.snr_gamma = 5.0
  c.diffusion.sigma_data = 0.5
  # Rescale the betas so alpha_bar_T = 0 (Lin et al. 2024; v or x0 models).
  c.diffusion.zero_terminal_snr = False

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 2e-4
  c.optim.warmup_steps = 100
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 1.0
  # After the warm-up: "constant", "cosine" or "linear" decay to 0 at train.num_steps.
  c.optim.schedule = "constant"

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
  # EDM2's power-function EMAs (Karras et al. 2024), by relative width
  # sigma_rel (EDM2 keeps 0.05 and 0.10); sample.ema_sigma_rel picks one.
  c.train.ema_sigma_rels = ()
  c.train.label_dropout = 0.1  # CFG: labels (captions) replaced by the null class ("")
  c.train.init_from = ""  # an export or workdir whose weights a new run starts from
  # The workdir's lease (training/workdir_lock.py): renewed every N seconds;
  # another run may take it over once it has gone this long without renewal.
  c.train.lock_renew_every = 5.0
  c.train.lock_stale_after = 60.0

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1 = all devices fsdp leaves; fewer takes the first ones
  c.mesh.fsdp = 1

  c.sample = ml_collections.ConfigDict()
  c.sample.method = "ddim"
  c.sample.steps = "50"  # respacing spec
  c.sample.eta = 0.0
  c.sample.guidance_scale = 1.0  # classifier-free, GLIDE's s (1 = off)
  # Classifier guidance: a trained noisy classifier (export or workdir) and
  # its scale s (ADM's classifier_sample.py; 1.0 is ADM's 64x64 setting).
  c.sample.classifier = ""
  c.sample.classifier_scale = 1.0
  c.sample.clip_denoised = True
  # The starting noise is scaled by this (GLIDE's upsampler: 0.997).
  c.sample.temperature = 1.0
  # RePaint's resampling when inpainting with a model not trained to
  # inpaint: resample > 1 turns it on (RePaint's defaults: 10 and 10).
  c.sample.resample = 1
  c.sample.jump = 10
  # Editing (inference/edit_mode.py): an image to inpaint (with a mask PNG,
  # white keeps) or re-noise to `strength`, or grow ("right:8x3"); an
  # upsampler's inputs (a samples .npz or PNGs); or a base model's samples
  # upsampled by `upsampler` (a cascade).
  c.sample.init_image = ""
  c.sample.mask = ""
  c.sample.strength = 1.0
  c.sample.outpaint = ""
  c.sample.base_samples = ""
  c.sample.upsampler = ""
  # A scene built stage by stage: "a red circle|a blue square@2|a green
  # triangle@7" (the first drawn, each next inpainted into a grid cell 0-8
  # or the black of a mask PNG: "PROMPT@mask.png").
  c.sample.scene = ""
  # A text-to-image model's prompts, "|"-separated: one grid row each.
  # A prompt schedule: `prompts_after` from the step `switch_at` (a fraction
  # of the steps, counted from t = T) to the end.
  c.sample.prompts = ""
  c.sample.prompts_after = ""
  c.sample.switch_at = 1.0
  # CLIP guidance: a trained noised CLIP (export or workdir) and its scale.
  c.sample.clip = ""
  c.sample.clip_scale = 1.0
  c.sample.per_class = 8  # columns of the grid, one row per class
  c.sample.labels = ()  # rows to draw; () = every class
  c.sample.seed = 0
  c.sample.use_ema = True
  c.sample.ema_rate = 0.999
  c.sample.ema_sigma_rel = 0.0  # > 0: the power EMA of train.ema_sigma_rels instead
  c.sample.output = ""  # "" = WORKDIR/samples/sampled_STEP.png (or samples_NxHxWxC.npz)
  # --mode=sample: N > 0 writes N samples to one .npz (arr_0 uint8 images,
  # arr_1 labels: sample.labels in turn, or random classes), drawn
  # `batch_size` at a time over all devices; 0 writes the grid.
  c.sample.num_samples = 0
  c.sample.batch_size = 64

  # --mode=eval (evaluation/eval_mode.py): samples drawn with `sample.*` (or
  # read from `samples`, a samples .npz) against the test split (or
  # `reference`, guided-diffusion's batch .npz), in the shipped evaluator's
  # features ("evaluator"; `evaluator` names another) or FID's ("inception",
  # with `inception`: the converted weights file).
  c.eval = ml_collections.ConfigDict()
  c.eval.num_samples = 1000
  c.eval.samples = ""
  c.eval.reference = ""
  c.eval.features = "evaluator"
  c.eval.evaluator = ""
  c.eval.inception = ""
  c.eval.k = 3  # precision and recall's nearest neighbours (Kynkaanniemi et al.)
  c.eval.kid_subsets = 100
  c.eval.kid_subset_size = 1000
  c.eval.bpd = False  # bits per dim over the whole chain (T network calls a batch)
  c.eval.bpd_num = 256  # test images
  c.eval.output = ""  # "" = WORKDIR/eval/eval_STEP.json
  return c


def variants(arg: str, allowed) -> set[str]:
  """The variants a config argument names: "quick", "uncond,quick", ...

  Raises:
    ValueError: naming an unknown variant and the allowed ones.
  """
  names = {part.strip() for part in arg.split(",") if part.strip()}
  unknown = sorted(names - set(allowed))
  if unknown:
    raise ValueError(f"unknown variant {unknown[0]!r}; use a comma-separated subset of "
                     f"{', '.join(repr(a) for a in allowed)} (or none)")
  return names


def noisy_classifier(data_name: str) -> ml_collections.ConfigDict:
  """The noisy classifier classifier guidance uses, for a 16x16 dataset: the
  diffusion configs' schedule, ADM's classifier learning rate."""
  c = base_config()
  c.task = "classifier"
  c.data.name = data_name
  c.data.batch_size = 64
  c.model.channels = 32
  c.model.channel_mult = (1, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attention_resolutions = (8,)
  c.model.pool_head_channels = 32
  c.optim.lr = 3e-4  # ADM's classifier learning rate
  c.optim.weight_decay = 0.05
  c.optim.warmup_steps = 50
  c.train.num_steps = 2000
  c.train.log_every = 25
  c.train.checkpoint_every = 500
  c.train.ema_rates = (0.995,)
  c.sample.ema_rate = 0.995  # the weights loading (guidance, the data filter) takes
  return c


def clean_evaluator(data_name: str, batch_size: int, num_steps: int) -> ml_collections.ConfigDict:
  """A clean-image evaluator (`evaluation/`): a small CNN naming every attribute."""
  c = base_config()
  c.task = "evaluator"
  c.data.name = data_name
  c.data.batch_size = batch_size
  c.model.channels = 32
  c.model.feature_dim = 128
  c.model.num_groups = 8
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.01
  c.optim.warmup_steps = 50
  c.train.num_steps = num_steps
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.ema_rates = (0.99,)
  c.sample.ema_rate = 0.99  # the weights loading and export take
  return c


def small_text2im(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """GLIDE's text-conditional UNet at a CPU size (configs/shapes_text2im.py,
  and the inpainting and upsampling models built on it): captions dropped
  20% of the time (GLIDE), sampled as GLIDE's notebook (100 DDPM steps,
  guidance scale 3)."""
  c.data.batch_size = 64
  c.model.class_conditional = False
  c.model.channels = 32
  c.model.channel_mult = (1, 2, 2)
  c.model.num_res_blocks = 1
  c.model.attention_resolutions = (8,)
  c.model.text_ctx = 16  # GPT-2 tokens; the longest one-object caption has 12
  c.model.xf_width = 64
  c.model.xf_layers = 2
  c.model.xf_heads = 4
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 50
  c.train.num_steps = 3000
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.label_dropout = 0.2  # GLIDE drops 20% of the captions
  c.train.ema_rates = (0.995,)
  c.sample.ema_rate = 0.995
  c.sample.method = "ddpm"
  c.sample.steps = "100"
  c.sample.guidance_scale = 3.0
  c.sample.per_class = 8
  return c


def scenes_text(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A text-conditional model on `shapes/scenes_16` (0 to 3 objects, every
  one named): the captions' context and v-prediction, which learns the place
  a caption names where eps-prediction stays at chance (docs/text2im.md)."""
  c.data.name = "shapes/scenes_16"
  c.model.text_ctx = 32  # GPT-2 tokens; the longest scene caption has 27
  c.diffusion.parameterization = "v"
  return c


def quick_text(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`quick` for a text-conditional model: a one-layer text model too."""
  quick(c)
  c.model.xf_width = 16
  c.model.xf_layers = 1
  c.model.xf_heads = 2
  c.model.num_heads = 2
  c.sample.prompts = "a red circle|a blue square"
  return c


def unconditional(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """No class labels: the model classifier guidance steers (ADM's LSUN and
  unconditional ImageNet models)."""
  c.model.class_conditional = False
  c.train.label_dropout = 0.0
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


# (section.field, rule, what it must be) for `check`.
_RULES = (
    ("data.batch_size", lambda v: v >= 1, ">= 1"),
    ("data.image_size", lambda v: v >= 0, ">= 0 (0: the dataset's own size)"),
    ("data.channels", lambda v: v >= 0, ">= 0 (0: the dataset's own channels)"),
    ("model.channels", lambda v: v >= 1, ">= 1"),
    ("model.num_res_blocks", lambda v: v >= 1, ">= 1"),
    ("model.dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("diffusion.num_timesteps", lambda v: v >= 2, ">= 2"),
    ("diffusion.vlb_weight", lambda v: v >= 0, ">= 0"),
    ("optim.lr", lambda v: v > 0, "> 0"),
    ("optim.warmup_steps", lambda v: v >= 0, ">= 0"),
    ("train.num_steps", lambda v: v >= 1, ">= 1"),
    ("train.log_every", lambda v: v >= 1, ">= 1"),
    ("train.checkpoint_every", lambda v: v >= 0, ">= 0 (0: only at the end)"),
    ("train.keep_checkpoints", lambda v: v >= 1, ">= 1"),
    ("train.keep_every", lambda v: v >= 0, ">= 0"),
    ("train.max_nonfinite_steps", lambda v: v >= 1, ">= 1"),
    ("train.sample_every", lambda v: v >= 0, ">= 0 (0: only at the end)"),
    ("train.lock_renew_every", lambda v: v > 0, "> 0 seconds"),
    ("train.lock_stale_after", lambda v: v > 0, "> 0 seconds"),
    ("train.ema_rates", lambda v: all(0 < r < 1 for r in v), "rates in (0, 1)"),
    ("train.ema_sigma_rels", lambda v: all(0 < s < 0.28 for s in v),
     "relative widths in (0, 0.28) (EDM2's sigma_rel)"),
    ("diffusion.snr_gamma", lambda v: v > 0, "> 0"),
    ("diffusion.sigma_data", lambda v: v > 0, "> 0"),
    ("diffusion.log_normal_std", lambda v: v > 0, "> 0"),
    ("train.label_dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("sample.per_class", lambda v: v >= 1, ">= 1"),
    ("sample.eta", lambda v: v >= 0, ">= 0"),
    ("sample.classifier_scale", lambda v: v >= 0, ">= 0"),
    ("sample.clip_scale", lambda v: v >= 0, ">= 0"),
    ("sample.switch_at", lambda v: 0 <= v <= 1, "in [0, 1] (a fraction of the steps)"),
    ("sample.strength", lambda v: 0 < v <= 1, "in (0, 1] (the fraction of the steps re-run)"),
    ("sample.temperature", lambda v: v > 0, "> 0"),
    ("sample.resample", lambda v: v >= 1, ">= 1 (1: no RePaint resampling)"),
    ("sample.jump", lambda v: v >= 1, ">= 1"),
    ("model.text_ctx", lambda v: v >= 0, ">= 0 (0: no text)"),
    ("model.low_res_size", lambda v: v >= 0, ">= 0 (0: not an upsampler)"),
    ("sample.num_samples", lambda v: v >= 0, ">= 0"),
    ("sample.batch_size", lambda v: v >= 1, ">= 1"),
    ("eval.num_samples", lambda v: v >= 2, ">= 2"),
    ("eval.k", lambda v: v >= 1, ">= 1"),
    ("eval.kid_subsets", lambda v: v >= 2, ">= 2"),
    ("eval.kid_subset_size", lambda v: v >= 2, ">= 2"),
    ("eval.bpd_num", lambda v: v >= 1, ">= 1"),
)

_CHOICES = {
    "task": ("diffusion", "classifier", "evaluator", "clip"),
    "model.dtype": ("float32", "bfloat16"),
    "model.attention_order": ("legacy", "new"),
    "model.attention_impl": ("", "xla", "cudnn"),
    "diffusion.schedule": ("linear", "cosine"),
    "diffusion.parameterization": ("eps", "x0", "v"),
    "diffusion.variance": ("fixed_small", "fixed_large", "learned_range", "learned"),
    "diffusion.timestep_sampler": ("uniform", "loss_second_moment", "log_normal"),
    "diffusion.loss_weighting": ("none", "min_snr", "edm"),
    "optim.schedule": ("constant", "cosine", "linear"),
    "sample.method": ("ddpm", "ddim", "euler", "euler_ancestral", "dpmpp_2m", "dpmpp_3m",
                      "dpmpp_2m_sde", "unipc", "heun"),
    "eval.features": ("evaluator", "inception"),
}


def _get(config, name: str):
  for part in name.split("."):
    config = config[part]
  return config


def check(config: ml_collections.ConfigDict) -> None:
  """Checks a config built on `base_config` whole, before any work starts.

  What needs the data or the model (label ranges, guidance needing a null
  class) is checked where those are known, still before training.

  Raises:
    ValueError: one line naming the first bad field and what it must be.
  """
  for name, choices in _CHOICES.items():
    if _get(config, name) not in choices:
      raise ValueError(f"{name} is {_get(config, name)!r}; choose one of {list(choices)}")
  for name, rule, must in _RULES:
    value = _get(config, name)
    if not rule(value):
      raise ValueError(f"{name} is {value!r}; it must be {must}")
  train = config.train
  if train.lock_stale_after <= 2 * train.lock_renew_every:
    raise ValueError(f"train.lock_stale_after is {train.lock_stale_after!r}; it must exceed "
                     f"twice train.lock_renew_every ({train.lock_renew_every!r})")
  _check_spacing(config)
  _check_recipe(config)
  if config.sample.use_ema and config.sample.ema_sigma_rel > 0:
    kept = [f"{r:g}" for r in config.train.ema_sigma_rels]
    if f"{config.sample.ema_sigma_rel:g}" not in kept:
      raise ValueError(f"sample.ema_sigma_rel {config.sample.ema_sigma_rel:g} is not one of "
                       f"train.ema_sigma_rels ({', '.join(kept) or 'none'})")
    return
  rates = [f"{r:g}" for r in config.train.ema_rates]
  if config.sample.use_ema and f"{config.sample.ema_rate:g}" not in rates:
    raise ValueError(f"sample.ema_rate {config.sample.ema_rate:g} is not one of "
                     f"train.ema_rates ({', '.join(rates)})")


def _check_spacing(config: ml_collections.ConfigDict) -> None:
  """The respacing spec against the schedule, in numpy: no JAX call may come
  before `jax.distributed.initialize`."""
  from diffusion_jax import schedules
  d = config.diffusion
  betas = schedules.named_betas(d.schedule, d.num_timesteps, d.zero_terminal_snr)  # [T]
  schedules.space_timesteps(d.num_timesteps, config.sample.steps, np.cumprod(1.0 - betas))


def _check_recipe(config: ml_collections.ConfigDict) -> None:
  """The recipe's combinations a one-line error refuses."""
  d = config.diffusion
  if d.zero_terminal_snr and d.parameterization == "eps":
    raise ValueError("diffusion.zero_terminal_snr needs parameterization 'v' or 'x0': "
                     "where alpha_bar_T = 0, x_0 cannot be had from eps")
  if d.loss_weighting == "edm" and d.parameterization == "eps":
    raise ValueError("diffusion.loss_weighting 'edm' needs parameterization 'v' or 'x0': "
                     "for eps its weight 1 + 1 / (sigma_data^2 SNR) is unbounded")
