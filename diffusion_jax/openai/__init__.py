"""OpenAI's released guided-diffusion and GLIDE checkpoints in diffusion_jax.

`convert(path, kind)` reads a released PyTorch checkpoint (weights only, no
code run), maps it onto our modules, and returns a `Bundle` that samples
with our compiled samplers (and writes an export with `output=`);
`released.KINDS` lists the kinds; docs/openai_models.md has the recipes.
"""
from diffusion_jax.openai.converter import convert, describe
from diffusion_jax.openai.released import KINDS, config_of, flags_of

__all__ = ["KINDS", "config_of", "convert", "describe", "flags_of"]
