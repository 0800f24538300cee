"""diffusion_jax: guided-diffusion and GLIDE in JAX/Flax.

The core is pure functions of a noise `Schedule`:

    from diffusion_jax import schedules, diffusion, sampling, guidance
    sched = schedules.make_schedule("cosine", 1000)
    x0 = sampling.sample(model_fn, schedules.respace(sched, "ddim50"),
                         (16, 32, 32, 3), rng, method="ddim", y=labels)

A trained model loads in one call: one that ships with the package by
name (`diffusion_jax.list_models()`), an export folder or a training workdir:

    text2im = diffusion_jax.load("shapes-text2im")
    images = text2im.sample(prompts=["a red circle", "a small blue square"])
    bundle = diffusion_jax.load("runs/shapes")
    images = bundle.sample(labels=[0, 5], steps="50")
    filled = bundle.inpaint(image, diffusion_jax.masks.cell(16, 4), labels=[3])
"""
from diffusion_jax import diffusion, guidance, masks, oracles, sampling, schedules

__version__ = "0.1.0"
__all__ = ["diffusion", "guidance", "list_models", "load", "masks", "oracles", "sampling",
           "schedules"]


def list_models() -> list[str]:
  """The names of the trained models that ship with the package: the shapes
  text-to-image model, its upsampler and inpainter, a noised CLIP, a noisy
  classifier, class-conditional shapes and digits models, and the
  clean-image evaluators ("shapes16", ...). docs/models.md has their cards;
  `diffusion_jax.pretrained.summary(name)` says what each one is."""
  from diffusion_jax import pretrained
  return pretrained.names()


def load(path, ema_rate=None, kind=None, step=None):
  """A trained model: a shipped one by name (`list_models()`, no network),
  an export folder or a training workdir; see
  `diffusion_jax.inference.loading.load`.

  Raises:
    ValueError: an unknown name (the message lists the shipped models), or
      damaged files.
  """
  from diffusion_jax.inference import loading
  return loading.load(path, ema_rate, kind, step)
