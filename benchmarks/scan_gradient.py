"""What a gradient costs inside the sampling loop's `lax.scan`, against outside it.

Classifier guidance takes the noisy classifier's gradient at every sampling
step, inside the one compiled loop. On XLA:CPU that gradient ran several
times slower inside a rolled `lax.scan` than as its own program, while the
forward pass did not. This measures, per step, for the shapes noisy
classifier's architecture (random weights; the cost does not depend on
them) at a batch of --batch 16x16 images:

- grad_alone: `jit(grad(log p(y | x)))`, one call;
- grad_in_scan: the same inside `lax.scan` of --length steps;
- grad_unrolled: the scan fully unrolled;
- forward_alone / forward_in_scan: the classifier's forward pass alike.

Prints one JSON object with the ratios in_scan / alone.

    python benchmarks/scan_gradient.py [--batch 144] [--length 5]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from common import best_of, environment  # noqa: E402
from diffusion_jax.data.info import DatasetInfo  # noqa: E402
from diffusion_jax.inference import spec as spec_lib  # noqa: E402

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "shapes_classifier.py"


def classifier(batch: int):
  """(log_prob(x) -> scalar, x [batch, 16, 16, 3]) for the shapes noisy classifier."""
  module_spec = importlib.util.spec_from_file_location("shapes_classifier", CONFIG)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config()
  info = DatasetInfo(image_size=16, channels=3, num_classes=18, train_examples=20_000)
  spec = spec_lib.make_spec(config, info)
  x = jax.random.normal(jax.random.key(0), (batch, 16, 16, 3))
  t = jnp.full((batch,), 500, jnp.int32)
  y = jnp.arange(batch) % info.num_classes
  params = spec.init_params(jax.random.key(1))

  def log_prob(x):
    logits = spec.apply(params, x, t)
    return jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(batch), y])
  return log_prob, x


def timed(fn, x, repeats: int, per: int = 1) -> float:
  compiled = jax.jit(fn)
  compiled(x).block_until_ready()
  return best_of(lambda: compiled(x).block_until_ready(), repeats) / per


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=144)
  parser.add_argument("--length", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  log_prob, x = classifier(args.batch)
  grad = jax.grad(log_prob)

  def forward(x):
    return x + 1e-3 * log_prob(x)

  def scanned(step, unroll=1):
    def body(carry, _):
      return carry + 1e-3 * step(carry), None
    return lambda x: jax.lax.scan(body, x, None, length=args.length, unroll=unroll)[0]

  n, r = args.length, args.repeats
  seconds = {
      "grad_alone": timed(grad, x, r),
      "grad_in_scan": timed(scanned(grad), x, r, n),
      "grad_unrolled": timed(scanned(grad, unroll=n), x, r, n),
      "forward_alone": timed(forward, x, r),
      "forward_in_scan": timed(scanned(forward), x, r, n),
  }
  print(json.dumps({  # noqa: T201
      "environment": environment(), "batch": args.batch, "length": n,
      "seconds_per_step": {k: round(v, 4) for k, v in seconds.items()},
      "grad_in_scan_over_alone": round(seconds["grad_in_scan"] / seconds["grad_alone"], 2),
      "forward_in_scan_over_alone": round(seconds["forward_in_scan"] / seconds["forward_alone"],
                                          2),
  }, indent=2))


if __name__ == "__main__":
  main()
