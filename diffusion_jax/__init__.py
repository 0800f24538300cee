"""diffusion_jax: guided-diffusion and GLIDE in JAX/Flax.

The core is pure functions of a noise `Schedule`:

    from diffusion_jax import schedules, diffusion, sampling, guidance
    sched = schedules.make_schedule("cosine", 1000)
    x0 = sampling.sample(model_fn, schedules.respace(sched, "ddim50"),
                         (16, 32, 32, 3), rng, method="ddim", y=labels)

A trained model (an export folder or a training workdir) loads in one call:

    bundle = diffusion_jax.load("runs/shapes")
    images = bundle.sample(labels=[0, 5], steps="50")
    filled = bundle.inpaint(image, diffusion_jax.masks.cell(16, 4), labels=[3])
"""
from diffusion_jax import diffusion, guidance, masks, oracles, sampling, schedules

__version__ = "0.1.0"
__all__ = ["diffusion", "guidance", "list_models", "load", "masks", "oracles", "sampling",
           "schedules"]


def list_models() -> list[str]:
  """The names of the trained models that ship with the package (today the
  clean-image evaluators: "digits16", "shapes16", "shapes32")."""
  from diffusion_jax.evaluation import evaluator
  return evaluator.evaluator_names()


def load(path, ema_rate=None, kind=None):
  """A trained model: a shipped one by name (`list_models()`), an export
  folder or a training workdir; see `diffusion_jax.inference.loading.load`."""
  import pathlib

  from diffusion_jax.evaluation import evaluator
  from diffusion_jax.inference import loading
  if not pathlib.Path(path).exists() and str(path) in list_models():
    path = evaluator.WEIGHTS / str(path)
  return loading.load(path, ema_rate, kind)
