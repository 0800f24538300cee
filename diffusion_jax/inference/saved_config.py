"""A config file that returns a model's own saved config.

`--mode=sample`, `eval` and `export` take it when no --config is given:
`main` passes `--config=<this file>:WORKDIR`, so `--config.sample.*`
overrides apply to the config the model was trained (or converted) with.
"""
from diffusion_jax.inference import loading


def get_config(path: str = ""):
  if not path:
    raise ValueError("saved_config.py needs the workdir or export: FILE:PATH")
  return loading.saved_config(path)
