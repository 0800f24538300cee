"""diffusion_jax: guided-diffusion and GLIDE in JAX/Flax.

The core is pure functions of a noise `Schedule`:

    from diffusion_jax import schedules, diffusion, sampling, guidance
    sched = schedules.make_schedule("cosine", 1000)
    x0 = sampling.sample(model_fn, schedules.respace(sched, "ddim50"),
                         (16, 32, 32, 3), rng, method="ddim", y=labels)

A trained model (an export folder or a training workdir) loads in one call:

    bundle = diffusion_jax.load("runs/shapes")
    images = bundle.sample(labels=[0, 5], steps="50")
"""
from diffusion_jax import diffusion, guidance, oracles, sampling, schedules

__version__ = "0.1.0"
__all__ = ["diffusion", "guidance", "load", "oracles", "sampling", "schedules"]


def load(path, ema_rate=None, kind=None):
  """A trained model ready to sample, from an export folder or a training
  workdir: see `diffusion_jax.inference.loading.load`."""
  from diffusion_jax.inference import loading
  return loading.load(path, ema_rate, kind)
