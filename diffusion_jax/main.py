"""Command line: `python -m diffusion_jax.main --mode=MODE --config=FILE[:variant] --workdir=DIR`.

Modes:
  toy: sample a 2-D Gaussian mixture with its exact denoiser (every sampler
    and guidance), write `samples.png`, `samples.npz` and `summary.json`.

Override any config field with `--config.section.field=value`.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags

_MODES = ("toy",)

FLAGS = flags.FLAGS
_MODE = flags.DEFINE_enum("mode", "toy", _MODES, "What to run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where outputs go.", required=True)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file, e.g. configs/toy_mixture.py:quick.",
    lock_config=True)


def _run_toy(config, workdir):
  from diffusion_jax import toy
  summary = toy.run(config, workdir)
  print(json.dumps(summary, indent=2))
  print(f"wrote {workdir}/samples.png, samples.npz and summary.json")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  if config is None:
    fail("--config is required, e.g. --config=configs/toy_mixture.py")
  if not isinstance(config, ml_collections.ConfigDict):  # config_flags' lazy error
    path = config_flags.get_config_filename(FLAGS["config"])
    fail(f"could not load the config file {path!r} (is the path right?)")
  logging.info("mode=%s workdir=%s\n%s", _MODE.value, _WORKDIR.value, config)
  {"toy": _run_toy}[_MODE.value](config, _WORKDIR.value)


def fail(message: str) -> None:
  """Exits with a one-line error (status 2), no traceback."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv):
  """absl flag parsing with one-line errors for bad flags or config overrides."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    lines = [line for line in str(e).splitlines() if line.strip()]
    # config_flags embeds the config file's traceback: keep its last line.
    fail(lines[0] if len(lines) < 2 else f"{lines[0]} {lines[-1]}")
  except (AttributeError, KeyError, ValueError, TypeError) as e:
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    where = f" (overrides: {' '.join(overrides)})" if overrides else ""
    fail(f"bad config{where}: {type(e).__name__}: {str(e).strip(chr(34))}")


def run():
  """Entry point of the `diffusion-jax` console script."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  sys.exit(run())
