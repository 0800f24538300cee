"""Judging samples: the clean-image evaluators that ship with the package.

`load_evaluator("shapes16")` loads a trained evaluator by name, with no
network and no workdir; `predict` gives each image's attributes and
`features` its feature vector; `accuracy` measures an evaluator on a split;
`judge(evaluator, images, labels)` measures samples' fidelity (class
accuracy) and diversity (feature distance, spread of the free attributes).
"""
from diffusion_jax.evaluation.evaluator import (
    accuracy,
    evaluator_names,
    features,
    load_evaluator,
    predict,
)
from diffusion_jax.evaluation.metrics import judge

__all__ = ["accuracy", "evaluator_names", "features", "judge", "load_evaluator", "predict"]
