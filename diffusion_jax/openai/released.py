"""OpenAI's released guided-diffusion and GLIDE models: their flags, and our configs.

A *family* is a model-creation function of the reference code with its
default flags (`model_and_diffusion_defaults()`, `classifier_defaults()`,
...). A *kind* names a released checkpoint: its family and the flags that
the reference READMEs and notebooks build it with. `flags_of(kind, extra)`
gives every flag after defaults (the same dict the reference factory
receives), and `config_of(kind, flags)` our config and data description,
which build the same network (`spec.make_spec`) with the same schedule, and
sample as the reference recipe does (`sample.*`).

Flags are parsed as guided-diffusion's `add_dict_to_argparser` parses them:
"--name value" pairs, booleans as yes/no/true/false/1/0. A few flags beyond
the reference ones describe checkpoints of other shapes (`EXTENSIONS`): a
classifier's `num_head_channels`, `channel_mult` and `num_classes`, which
its factory fixes; `num_classes` for a diffusion model and an upsampler,
and an upsampler's `channel_mult`; `small_size` for a GLIDE upsampler;
`noise_schedule` for a classifier (the schedule of the model it guides).
"""
from __future__ import annotations

import dataclasses
import shlex
from typing import Any

import ml_collections

from diffusion_jax import config_lib
from diffusion_jax.data.info import DatasetInfo

_DIFFUSION = dict(learn_sigma=False, diffusion_steps=1000, noise_schedule="linear",
                  timestep_respacing="", use_kl=False, predict_xstart=False,
                  rescale_timesteps=False, rescale_learned_sigmas=False)

# family -> the reference factory's defaults (guided-diffusion script_util,
# glide_text2im model_creation, glide_text2im/clip/config.yaml).
DEFAULTS: dict[str, dict[str, Any]] = {
    "adm": dict(image_size=64, num_channels=128, num_res_blocks=2, num_heads=4,
                num_heads_upsample=-1, num_head_channels=-1, attention_resolutions="16,8",
                channel_mult="", dropout=0.0, class_cond=False, use_checkpoint=False,
                use_scale_shift_norm=True, resblock_updown=False, use_fp16=False,
                use_new_attention_order=False, **_DIFFUSION),
    "adm_upsampler": dict(num_channels=128, num_res_blocks=2, num_heads=4,
                          num_heads_upsample=-1, num_head_channels=-1,
                          attention_resolutions="16,8", dropout=0.0, class_cond=False,
                          use_checkpoint=False, use_scale_shift_norm=True,
                          resblock_updown=False, use_fp16=False, **_DIFFUSION,
                          large_size=256, small_size=64),
    "adm_classifier": dict(image_size=64, classifier_use_fp16=False, classifier_width=128,
                           classifier_depth=2, classifier_attention_resolutions="32,16,8",
                           classifier_use_scale_shift_norm=True,
                           classifier_resblock_updown=True, classifier_pool="attention"),
    "glide": dict(image_size=64, num_channels=192, num_res_blocks=3, channel_mult="",
                  num_heads=1, num_head_channels=64, num_heads_upsample=-1,
                  attention_resolutions="32,16,8", dropout=0.1, text_ctx=128, xf_width=512,
                  xf_layers=16, xf_heads=8, xf_final_ln=True, xf_padding=True,
                  diffusion_steps=1000, noise_schedule="squaredcos_cap_v2",
                  timestep_respacing="", use_scale_shift_norm=True, resblock_updown=True,
                  use_fp16=True, cache_text_emb=False, inpaint=False, super_res=False),
    "glide_clip": dict(logit_scale=100.0, beta_schedule="squaredcos_cap_v2",
                       n_timesteps=1000, image_size=64, patch_size=4, n_vocab=65536,
                       max_text_len=77, n_embd=512, n_head_state_text=64, n_head_text=8,
                       n_xf_blocks_text=12, n_head_state_image=64, n_head_image=12,
                       n_xf_blocks_image=12),
}
# Flags of ours, beyond the reference factory's, and their defaults (None:
# derived from the other flags).
EXTENSIONS: dict[str, dict[str, Any]] = {
    "adm": dict(num_classes=1000),
    "adm_upsampler": dict(num_classes=1000, channel_mult=""),
    "adm_classifier": dict(num_classes=1000, num_head_channels=64, channel_mult="",
                           noise_schedule="linear", diffusion_steps=1000),
    "glide": dict(small_size=None),
    "glide_clip": {},
}

_ADM64 = ("--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 "
          "--dropout 0.1 --image_size 64 --learn_sigma True --noise_schedule cosine "
          "--num_channels 192 --num_head_channels 64 --num_res_blocks 3 --resblock_updown True "
          "--use_new_attention_order True --use_fp16 True --use_scale_shift_norm True")
_ADM = ("--attention_resolutions 32,16,8 --diffusion_steps 1000 --learn_sigma True "
        "--noise_schedule linear --num_channels 256 --num_res_blocks 2 --resblock_updown True "
        "--use_fp16 True --use_scale_shift_norm True")
_ADM256 = f"{_ADM} --image_size 256 --num_head_channels 64"
_LSUN = f"{_ADM256} --class_cond False --dropout 0.1"
_SR = ("--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 "
       "--learn_sigma True --noise_schedule linear --num_channels 192 --num_res_blocks 2 "
       "--resblock_updown True --use_fp16 True --use_scale_shift_norm True")


@dataclasses.dataclass(frozen=True)
class Kind:
  """A released checkpoint.

  Attributes:
    family: the factory that builds it (a key of `DEFAULTS`).
    flags: the reference flags it is built with (README, notebook).
    files: the released file name(s): one per tower for the CLIP.
    sample: our `sample.*` settings of the reference recipe (README,
      notebooks): method, steps, scales.
  """
  family: str
  flags: str
  files: tuple[str, ...]
  sample: tuple[tuple[str, Any], ...] = ()


def _adm_sample(scale: float) -> tuple:
  """guided-diffusion's README: 250 respaced ancestral steps, and the
  classifier scale its classifier_sample.py command gives this model."""
  return (("method", "ddpm"), ("steps", "250"), ("classifier_scale", scale))


# The CLIP-guided notebook: no CFG (guidance_scale=1), the CLIP at scale 3.
_GLIDE_BASE = (("method", "ddpm"), ("steps", "100"), ("clip_scale", 3.0))
_GLIDE_UPSAMPLE = (("method", "ddim"), ("steps", "fast27"), ("eta", 0.0),
                   ("temperature", 0.997), ("guidance_scale", 1.0))

KINDS: dict[str, Kind] = {
    "64x64_diffusion": Kind("adm", _ADM64, ("64x64_diffusion.pt",), _adm_sample(1.0)),
    "128x128_diffusion": Kind(
        "adm", "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 "
        "--image_size 128 --learn_sigma True --noise_schedule linear --num_channels 256 "
        "--num_heads 4 --num_res_blocks 2 --resblock_updown True --use_fp16 True "
        "--use_scale_shift_norm True", ("128x128_diffusion.pt",), _adm_sample(0.5)),
    "256x256_diffusion": Kind("adm", f"{_ADM256} --class_cond True",
                              ("256x256_diffusion.pt",), _adm_sample(1.0)),
    "256x256_diffusion_uncond": Kind("adm", f"{_ADM256} --class_cond False",
                                     ("256x256_diffusion_uncond.pt",), _adm_sample(10.0)),
    "512x512_diffusion": Kind(
        "adm", f"{_ADM} --class_cond True --image_size 512 --num_head_channels 64 "
        "--use_fp16 False", ("512x512_diffusion.pt",), _adm_sample(4.0)),
    "lsun_bedroom": Kind("adm", _LSUN, ("lsun_bedroom.pt",), _adm_sample(1.0)),
    "lsun_cat": Kind("adm", _LSUN, ("lsun_cat.pt",), _adm_sample(1.0)),
    "lsun_horse": Kind("adm", _LSUN, ("lsun_horse.pt",), _adm_sample(1.0)),
    "lsun_horse_nodropout": Kind("adm", f"{_LSUN} --dropout 0.0",
                                 ("lsun_horse_nodropout.pt",), _adm_sample(1.0)),
    "64_256_upsampler": Kind("adm_upsampler", f"{_SR} --large_size 256 --small_size 64 "
                             "--num_heads 4", ("64_256_upsampler.pt",), _adm_sample(1.0)),
    "128_512_upsampler": Kind("adm_upsampler", f"{_SR} --large_size 512 --small_size 128 "
                              "--num_head_channels 64 --attention_resolutions 32,16",
                              ("128_512_upsampler.pt",), _adm_sample(1.0)),
    "64x64_classifier": Kind("adm_classifier", "--image_size 64 --classifier_depth 4 "
                             "--noise_schedule cosine", ("64x64_classifier.pt",)),
    "128x128_classifier": Kind("adm_classifier", "--image_size 128",
                               ("128x128_classifier.pt",)),
    "256x256_classifier": Kind("adm_classifier", "--image_size 256",
                               ("256x256_classifier.pt",)),
    "512x512_classifier": Kind("adm_classifier", "--image_size 512",
                               ("512x512_classifier.pt",)),
    # GLIDE (filtered): its notebooks' settings, CFG 3 (base) and 5 (inpainting).
    "base": Kind("glide", "", ("base.pt",), _GLIDE_BASE + (("guidance_scale", 3.0),)),
    "base-inpaint": Kind("glide", "--inpaint True", ("base_inpaint.pt",),
                         _GLIDE_BASE + (("guidance_scale", 5.0),)),
    "upsample": Kind("glide", "--image_size 256 --num_res_blocks 2 --noise_schedule linear "
                     "--super_res True", ("upsample.pt",), _GLIDE_UPSAMPLE),
    "upsample-inpaint": Kind("glide", "--image_size 256 --num_res_blocks 2 --noise_schedule "
                             "linear --super_res True --inpaint True",
                             ("upsample_inpaint.pt",), _GLIDE_UPSAMPLE),
    "clip": Kind("glide_clip", "", ("clip_image_enc.pt", "clip_text_enc.pt")),
}


def _boolean(text: str) -> bool:
  """guided-diffusion's `str2bool`."""
  if text.lower() in ("yes", "true", "t", "y", "1"):
    return True
  if text.lower() in ("no", "false", "f", "n", "0"):
    return False
  raise ValueError(f"{text!r} is not a boolean (true/false)")


def parse_flags(text: str, family: str) -> dict[str, Any]:
  """`--name value` pairs of `text`, typed as `family`'s defaults type them.

  Raises:
    ValueError: an unknown flag, a flag without a value, or a bad value.
  """
  known = {**DEFAULTS[family], **EXTENSIONS[family]}
  words = shlex.split(text)
  parsed = {}
  while words:
    word = words.pop(0)
    name, _, value = word[2:].partition("=")
    if not word.startswith("--") or not name:
      raise ValueError(f"--flags: expected --name value, got {word!r}")
    if name not in known:
      raise ValueError(f"--flags: {family} models have no flag {name!r}; they take "
                       f"{', '.join(sorted(known))}")
    if not value:
      if not words:
        raise ValueError(f"--flags: --{name} has no value")
      value = words.pop(0)
    default = known[name]
    try:
      parsed[name] = (_boolean(value) if isinstance(default, bool) else
                      type(default)(value) if default is not None else int(value))
    except ValueError as e:
      raise ValueError(f"--flags: --{name} {value!r}: {e}") from None
  return parsed


def kind_of(name: str) -> Kind:
  if name not in KINDS:
    raise ValueError(f"unknown kind {name!r}; the released models are "
                     f"{', '.join(KINDS)}")
  return KINDS[name]


def flags_of(kind: str, extra: str = "") -> dict[str, Any]:
  """Every flag of `kind` after defaults, with `extra` ("--name value ...")
  on top: the arguments the reference factory receives, and ours."""
  k = kind_of(kind)
  return {**DEFAULTS[k.family], **EXTENSIONS[k.family], **parse_flags(k.flags, k.family),
          **parse_flags(extra, k.family)}


def _ints(text: str) -> tuple:
  return tuple(int(p) for p in text.split(",") if p.strip())


def _mult(text: str, image_size: int, table: dict[int, tuple]) -> tuple:
  """`channel_mult` given ("1,2,3,4", "0.5,1,..."), or the factory's choice
  for the image size."""
  if text:
    return tuple(float(p) if "." in p else int(p) for p in text.split(","))
  if image_size not in table:
    raise ValueError(f"no default channel_mult for image_size {image_size}; give "
                     "--channel_mult in --flags")
  return table[image_size]


# The factories' channel_mult by image size (script_util.create_model,
# create_classifier, sr_create_model; GLIDE's create_model).
_ADM_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
             64: (1, 2, 3, 4)}
_SR_MULT = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}
_GLIDE_MULT = {256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
_SCHEDULES = {"linear": "linear", "cosine": "cosine", "squaredcos_cap_v2": "cosine"}


def _schedule(name: str) -> str:
  if name not in _SCHEDULES:
    raise ValueError(f"noise schedule {name!r}: diffusion_jax has {', '.join(_SCHEDULES)}")
  return _SCHEDULES[name]


def _network(c, channels, mult, blocks, attention, head_channels, scale_shift,
             updown) -> None:
  """The fields every reference network sets: the UNet's and the classifier's."""
  c.model.channels = channels
  c.model.channel_mult = mult
  c.model.num_res_blocks = blocks
  c.model.attention_resolutions = _ints(attention)
  c.model.num_head_channels = head_channels
  c.model.use_scale_shift_norm = scale_shift
  c.model.resblock_updown = updown
  c.model.num_groups = 32


def _unet_fields(c, f, mult) -> None:
  """The UNet fields the guided-diffusion and GLIDE factories share."""
  if f["num_heads_upsample"] not in (-1, f["num_heads"]):
    raise ValueError("num_heads_upsample differs from num_heads: diffusion_jax's UNet "
                     "uses one head count in both halves")
  _network(c, f["num_channels"], mult, f["num_res_blocks"], f["attention_resolutions"],
           f["num_head_channels"], f["use_scale_shift_norm"], f["resblock_updown"])
  c.model.num_heads = f["num_heads"]
  c.model.dropout = f["dropout"]
  c.model.attention_order = "new" if f.get("use_new_attention_order") else "legacy"


def _diffusion_fields(c, f) -> None:
  for name in ("rescale_timesteps",):
    if f.get(name):
      raise ValueError(f"--{name} True is not supported: our models take the original "
                       "timesteps")
  c.diffusion.schedule = _schedule(f["noise_schedule"])
  c.diffusion.num_timesteps = f["diffusion_steps"]
  c.diffusion.parameterization = "x0" if f.get("predict_xstart") else "eps"
  c.model.learn_sigma = f.get("learn_sigma", True)
  # guided-diffusion samples a fixed variance with beta_t (sigma_small False).
  c.diffusion.variance = "fixed_large"
  c.train.label_dropout = 0.0
  timesteps = f.get("timestep_respacing")
  if timesteps:
    c.sample.steps = timesteps
    c.sample.method = "ddim" if timesteps.startswith("ddim") else c.sample.method


def _adm(c, f, name) -> DatasetInfo:
  size = f["image_size"]
  _unet_fields(c, f, _mult(f["channel_mult"], size, _ADM_MULT))
  _diffusion_fields(c, f)
  c.model.class_conditional = f["class_cond"]
  c.data.name = "imagenet2012" if f["class_cond"] else name
  return DatasetInfo(size, 3, f["num_classes"] if f["class_cond"] else None, 0)


def _adm_upsampler(c, f, name) -> DatasetInfo:
  size = f["large_size"]
  _unet_fields(c, f, _mult(f["channel_mult"], size, _SR_MULT))
  _diffusion_fields(c, f)
  c.model.class_conditional = f["class_cond"]
  c.model.low_res_size = f["small_size"]
  c.data.name = "imagenet2012" if f["class_cond"] else name
  return DatasetInfo(size, 3, f["num_classes"] if f["class_cond"] else None, 0)


def _adm_classifier(c, f, name) -> DatasetInfo:
  if f["classifier_pool"] != "attention":
    raise ValueError(f"classifier_pool {f['classifier_pool']!r}: diffusion_jax's noisy "
                     "classifier pools by attention (ADM's released classifiers do)")
  size = f["image_size"]
  c.task = "classifier"
  _network(c, f["classifier_width"], _mult(f["channel_mult"], size, _ADM_MULT),
           f["classifier_depth"], f["classifier_attention_resolutions"],
           f["num_head_channels"], f["classifier_use_scale_shift_norm"],
           f["classifier_resblock_updown"])
  c.model.pool_head_channels = f["num_head_channels"]
  c.diffusion.schedule = _schedule(f["noise_schedule"])
  c.diffusion.num_timesteps = f["diffusion_steps"]
  c.data.name = "imagenet2012"
  return DatasetInfo(size, 3, f["num_classes"], 0)


def _glide(c, f, name) -> DatasetInfo:
  size = f["image_size"]
  _unet_fields(c, f, _mult(f["channel_mult"], size, _GLIDE_MULT))
  _diffusion_fields(c, dict(f, learn_sigma=True))  # GLIDE's UNets output 6 channels
  c.model.class_conditional = False
  c.model.text_ctx = f["text_ctx"]
  c.model.xf_width = f["xf_width"]
  c.model.xf_layers = f["xf_layers"]
  c.model.xf_heads = f["xf_heads"]
  c.model.xf_final_ln = f["xf_final_ln"]
  c.model.xf_padding = f["xf_padding"]
  c.model.inpaint = f["inpaint"]
  if f["super_res"]:  # GLIDE's upsampler takes 64x64 images up to 256x256
    c.model.low_res_size = f["small_size"] or size // 4
  c.train.label_dropout = 0.2  # GLIDE dropped 20% of the captions
  c.data.name = name
  return DatasetInfo(size, 3, None, 0, captions=True)


def _glide_clip(c, f, name) -> DatasetInfo:
  if f["n_vocab"] != 65536:
    raise ValueError(f"n_vocab {f['n_vocab']}: the noised CLIP's text tower has 65536 rows")
  c.task = "clip"
  c.model.clip = ml_collections.ConfigDict(dict(
      text_ctx=f["max_text_len"], text_width=f["n_head_state_text"] * f["n_head_text"],
      text_layers=f["n_xf_blocks_text"], text_heads=f["n_head_text"],
      patch_size=f["patch_size"], image_width=f["n_head_state_image"] * f["n_head_image"],
      image_layers=f["n_xf_blocks_image"], image_heads=f["n_head_image"],
      embed_dim=f["n_embd"]))
  c.diffusion.schedule = _schedule(f["beta_schedule"])
  c.diffusion.num_timesteps = f["n_timesteps"]
  c.data.name = name
  return DatasetInfo(f["image_size"], 3, None, 0, captions=True)


_BUILDERS = {"adm": _adm, "adm_upsampler": _adm_upsampler, "adm_classifier": _adm_classifier,
             "glide": _glide, "glide_clip": _glide_clip}
# The weights the reference releases: EMA 0.9999 for the diffusion models
# (ADM's appendix), the classifiers' and CLIP's own (no average).
RELEASED_EMA = 0.9999


def config_of(kind: str, flags: dict[str, Any]) -> tuple[ml_collections.ConfigDict, DatasetInfo]:
  """Our config and data description of a `kind` checkpoint built with `flags`
  (`flags_of`), sampled as the reference recipe does.

  Raises:
    ValueError: a flag value diffusion_jax cannot build.
  """
  k = kind_of(kind)
  c = config_lib.base_config()
  info = _BUILDERS[k.family](c, flags, f"openai/{kind}")
  c.data.image_size, c.data.channels = info.image_size, info.channels
  if c.task == "diffusion":
    c.train.ema_rates = (RELEASED_EMA,)
    c.sample.ema_rate = RELEASED_EMA
  else:
    c.sample.use_ema = False
  for name, value in k.sample:
    c.sample[name] = value
  config_lib.check(c)
  return c, info
