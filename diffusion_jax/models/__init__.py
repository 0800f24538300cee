"""Flax modules: the ADM UNet, the noisy classifier, the clean-image evaluator,
and their building blocks."""
from diffusion_jax.models.classifier import NoisyClassifier
from diffusion_jax.models.evaluator import Evaluator
from diffusion_jax.models.unet import UNet

__all__ = ["Evaluator", "NoisyClassifier", "UNet"]
