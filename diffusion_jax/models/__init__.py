"""Flax modules: the ADM UNet, the noisy classifier, and their building blocks."""
from diffusion_jax.models.classifier import NoisyClassifier
from diffusion_jax.models.unet import UNet

__all__ = ["NoisyClassifier", "UNet"]
