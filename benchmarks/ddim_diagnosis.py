"""Why DDIM at eta 0 draws residual noise: the experiments of docs/recipe.md.

On a trained class-conditional model (default: the shipped `shapes-classes`)
this measures, on the same labels and seeds:

1. `x0_error`: on noised test scenes, the relative MSE of the predicted eps,
   and the RMSE of the x_0 it implies (clipped, as the sampler clips it),
   at each probed t. An eps-model's x_0 error is its eps error times
   sqrt((1 - abar) / abar): x6 at t = 900, x30 at t = 980, x20,000 at 999.
2. `switch`: the residual-noise fraction of 50-step DDIM whose eta is 1
   above a switch timestep and 0 below it (`ode_below`), and the reverse
   (`ode_above`: eta 0 above, 1 below). Where the damage is done, and
   whether the stochastic steps repair it.
3. `from_data`: eta 0 started from test scenes noised to t_start with
   q_sample (x_t in the training distribution), against the same with eta 1.

Residual noise: the mean absolute difference between neighbouring pixels
(`evaluation.metrics.roughness`) above the dataset's threshold.

    python benchmarks/ddim_diagnosis.py --model=shapes-classes \
        --out=benchmarks/results/ddim_diagnosis_shapes_classes.json

`--grid=OUT.png --grid_models=A,B` instead draws one row per model: DDIM at
eta 0, 50 steps, the same 16 labels (classes 0-15) and seed, each sample's
roughness over the threshold counted in the row's title.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import emit, environment  # noqa: E402
from diffusion_jax import diffusion, sampling, schedules  # noqa: E402
from diffusion_jax.data import pipeline  # noqa: E402
from diffusion_jax.evaluation import metrics  # noqa: E402
from diffusion_jax.inference import loading  # noqa: E402

PROBE_T = (10, 100, 250, 500, 750, 900, 950, 980, 999)
SWITCH_T = (999, 900, 750, 500, 250, 0)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="shapes-classes", help="name, export or workdir")
  parser.add_argument("--num", type=int, default=128, help="samples per point")
  parser.add_argument("--steps", default="50")
  parser.add_argument("--seed", type=int, default=3)
  parser.add_argument("--out", default="")
  parser.add_argument("--grid", default="", help="draw the comparison grid here instead")
  parser.add_argument("--grid_models", default="", help="comma-separated models, one row each")
  parser.add_argument("--grid_names", default="", help="their row titles")
  return parser.parse_args(argv)


def comparison_grid(args) -> None:
  """One row per model: DDIM eta 0 from the same noise and labels."""
  from diffusion_jax import visualize
  models = args.grid_models.split(",")
  names = args.grid_names.split(",") if args.grid_names else models
  rows, titles = [], []
  for model, name in zip(models, names):
    bundle = loading.load(model)
    images = bundle.sample(labels=list(range(16)), seed=args.seed, method="ddim", eta=0.0,
                           steps=args.steps)
    noisy = int(np.sum(metrics.roughness(images) > metrics.residual_noise_threshold(
        bundle.config.data)))
    rows.append(images)
    titles.append(f"{name}: {noisy} of 16 noise")
  visualize.image_grid(np.stack(rows), titles).save(args.grid)
  print(f"wrote {args.grid}: {'; '.join(titles)}")  # noqa: T201


class Chain:
  """One compiled 50-step DDIM chain whose eta is an array per step."""

  def __init__(self, bundle, steps: str):
    self.bundle = bundle
    self.fast = schedules.respace(bundle.schedule, steps)
    spec = bundle.spec
    opts = sampling.StepOptions(True, spec.parameterization, spec.variance)
    keys = spec.encoded_keys

    def model_fn(params, x, t, y):
      return spec.apply(params, x, t, **{k: v for k, v in {"y": y}.items() if k in keys})

    @jax.jit
    def step(params, x, t_index, eta, rng, y):
      t = jnp.full((x.shape[0],), t_index, jnp.int32)
      fn = lambda x, t, y: model_fn(params, x, t, y)  # noqa: E731
      return sampling.ddim_step(fn, self.fast, x, t, rng, eta, opts, y=y)[0]

    self.step = step

  def run(self, x, labels, etas, seed: int, start: int | None = None) -> np.ndarray:
    """x_0 from x at respaced index `start` (default the last), eta per index."""
    n = self.fast.num_timesteps
    start = n - 1 if start is None else start
    rng = jax.random.PRNGKey(seed)
    y = jnp.asarray(labels, jnp.int32)
    for i in range(start, -1, -1):
      x = self.step(self.bundle.params, x, i, jnp.float32(etas[i]), jax.random.fold_in(rng, i), y)
    return np.asarray(x)


def x0_error(bundle, images, labels, seed) -> list[dict]:
  """Per probed t: eps's relative MSE and the x_0 it implies, on test scenes."""
  spec, sched = bundle.spec, bundle.schedule

  @jax.jit
  def predict(x0, t, noise, y):
    x_t = diffusion.q_sample(sched, x0, t, noise)
    out = spec.apply(bundle.params, x_t, t, y=y)
    pred = diffusion.p_mean_variance(sched, out, x_t, t, parameterization=spec.parameterization,
                                     variance=spec.variance, clip_denoised=True)
    raw = diffusion.x0_from_prediction(sched, out[..., :x0.shape[-1]], x_t, t,
                                       spec.parameterization)
    return pred.pred_eps, pred.pred_x0, raw

  rows = []
  for t_value in PROBE_T:
    noise = jax.random.normal(jax.random.PRNGKey(seed + t_value), images.shape)
    t = jnp.full((len(images),), t_value, jnp.int32)
    eps, x0, raw_x0 = (np.asarray(a) for a in predict(images, t, noise, labels))
    eps_true, clean = np.asarray(noise), np.asarray(images)
    rows.append({
        "t": t_value,
        "abar": float(sched.alphas_cumprod[t_value]),
        "eps_relative_mse": float(np.mean((eps - eps_true) ** 2) / np.mean(eps_true ** 2)),
        "x0_rmse_clipped": float(np.sqrt(np.mean((x0 - clean) ** 2))),
        "x0_rmse_unclipped": float(np.sqrt(np.mean((raw_x0 - clean) ** 2))),
        "x0_roughness_median": float(np.median(metrics.roughness(x0))),
    })
  return rows


def main(argv=None):
  args = parse_args(argv)
  if args.grid:
    comparison_grid(args)
    return
  bundle = loading.load(args.model)
  info = bundle.info
  threshold = metrics.residual_noise_threshold(bundle.config.data)
  num_classes = bundle.spec.num_classes
  labels = np.arange(args.num) % num_classes
  chain = Chain(bundle, args.steps)
  n = chain.fast.num_timesteps
  kept = np.asarray(chain.fast.timesteps)
  x_T = np.asarray(jax.random.normal(jax.random.PRNGKey(args.seed),
                                     (args.num, info.image_size, info.image_size, info.channels)))

  def noisy_fraction(images):
    return float(np.mean(metrics.roughness(images) > threshold))

  started = time.perf_counter()
  report = {"benchmark": "ddim_diagnosis", "model": args.model, "bundle": repr(bundle),
            "steps": args.steps, "num": args.num, "seed": args.seed,
            "residual_noise_threshold": threshold, "environment": environment()}
  images, examples = pipeline.split_examples(bundle.config.data, "test", args.num)
  test_labels = np.asarray([e["label"] for e in examples])
  report["x0_error"] = x0_error(bundle, jnp.asarray(images), jnp.asarray(test_labels), args.seed)
  switch = []
  for t_switch in SWITCH_T:
    below = (kept < t_switch).astype(np.float32)  # eta 1 above, 0 below: ODE below
    switch.append({"t_switch": t_switch,
                   "ode_below": noisy_fraction(chain.run(x_T, labels, 1.0 - below, args.seed)),
                   "ode_above": noisy_fraction(chain.run(x_T, labels, below, args.seed))})
  report["switch"] = switch
  from_data = []
  for t_start in (900, 750, 500):
    start = int(np.searchsorted(kept, t_start))
    t = jnp.full((len(images),), int(kept[start]), jnp.int32)
    noise = jax.random.normal(jax.random.PRNGKey(args.seed), images.shape)
    x_t = np.asarray(diffusion.q_sample(bundle.schedule, jnp.asarray(images), t, noise))
    from_data.append({"t_start": int(kept[start]),
                      "eta0": noisy_fraction(chain.run(x_t, test_labels, np.zeros(n), args.seed,
                                                       start)),
                      "eta1": noisy_fraction(chain.run(x_t, test_labels, np.ones(n), args.seed,
                                                       start))})
  report["from_data"] = from_data
  report["seconds"] = round(time.perf_counter() - started, 1)
  emit(report, args.out)


if __name__ == "__main__":
  main()
