"""The 2-D Gaussian-mixture demo: exact oracle denoiser, every sampler.

    python -m diffusion_jax.main --mode=toy --config=configs/toy_mixture.py \
        --workdir=runs/toy [--config.sample.num=4000]

Variant `configs/toy_mixture.py:quick` runs in a few seconds (tests).
"""
import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.schedule = "cosine"
  config.diffusion.num_timesteps = 1000

  # Three well-separated isotropic components in 2-D.
  config.data = ml_collections.ConfigDict()
  config.data.weights = (0.5, 0.3, 0.2)
  config.data.means = ((0.6, 0.6), (-0.6, 0.0), (0.3, -0.6))
  config.data.stds = (0.1, 0.15, 0.12)

  config.sample = ml_collections.ConfigDict()
  config.sample.num = 2000  # points per panel
  config.sample.ddim_steps = "100"  # respacing spec for the DDIM panels
  config.sample.guided_label = 2  # the class guidance steers towards
  config.sample.classifier_scale = 1.0  # s of classifier guidance
  config.sample.cfg_scale = 3.0  # s of classifier-free guidance (GLIDE's)
  config.sample.progress = True

  if arg == "quick":
    config.diffusion.num_timesteps = 200
    config.sample.num = 300
    config.sample.ddim_steps = "20"
    config.sample.progress = False
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of toy_mixture.py; use '' or 'quick'")
  return config
