"""Inference: what a trained model is, loading it, and sampling from it.

One floor below `training/`: `spec.ModelSpec` (network, schedule, variance,
conditioning declaration), `sampler.Sampler` (owns its compiled programs),
`loading.load` (the one way to load a trained model: `Bundle`), `outputs`
(grids, `.npz`) and `sample_mode` (`--mode=sample`).
"""
from diffusion_jax.inference.loading import Bundle, export, load
from diffusion_jax.inference.sampler import Sampler, SampleSettings
from diffusion_jax.inference.spec import ModelSpec, make_spec

__all__ = ["Bundle", "ModelSpec", "SampleSettings", "Sampler", "export", "load", "make_spec"]
