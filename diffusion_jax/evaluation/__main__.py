"""`python -m diffusion_jax.evaluation --name=shapes16 [--split=test] [--write]`:
a shipped evaluator's accuracy per attribute on a split of its data (JSON)."""
import sys

from diffusion_jax.evaluation import evaluator

evaluator.main(sys.argv[1:])
