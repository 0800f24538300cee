"""The toy job: sample a 2-D Gaussian mixture with its exact denoiser.

Every sampler and both kinds of guidance, with the closed-form model of
`oracles.GaussianMixture`; writes a PNG of scatter plots, the samples as
`.npz` and a JSON summary of how well each panel matches its target.
"""
from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import guidance, oracles, sampling, schedules


def _panels(config, mixture, base):
  """(title, sampler kwargs, target component or None) for each panel."""
  fast = schedules.respace(base, config.sample.ddim_steps)
  steps = fast.num_timesteps
  label = config.sample.guided_label
  null = mixture.num_components
  classifier = guidance.classifier(mixture.class_log_prob_fn(base),
                                   config.sample.classifier_scale)
  model = mixture.model_fn(base)
  cfg_model = guidance.classifier_free(model, config.sample.cfg_scale, {"y": null})
  return [
      (f"DDPM, {base.num_timesteps} steps", dict(schedule=base), None),
      (f"DDIM eta=0, {steps} steps", dict(schedule=fast, method="ddim"), None),
      (f"DDIM eta=1, {steps} steps", dict(schedule=fast, method="ddim", eta=1.0), None),
      (f"classifier guidance s={config.sample.classifier_scale:g}, class {label}",
       dict(schedule=fast, method="ddim", cond_fn=classifier, guide_label=label), label),
      (f"classifier-free s={config.sample.cfg_scale:g}, class {label}",
       dict(schedule=fast, method="ddim", model_fn=cfg_model, guide_label=label), label),
  ]


def _draw(config, mixture, base, kwargs, rng):
  model = kwargs.pop("model_fn", mixture.model_fn(base))
  label = kwargs.pop("guide_label", mixture.num_components)
  y = jnp.full((config.sample.num,), label, jnp.int32)
  if "cond_fn" in kwargs:  # guidance by a classifier: the model is unconditional
    unconditional = mixture.model_fn(base)
    model = lambda x, t, **unused: unconditional(x, t)  # noqa: E731
  schedule = kwargs.pop("schedule")
  return sampling.sample(model, schedule, (config.sample.num, mixture.dim), rng,
                         clip_denoised=False, progress=config.sample.progress,
                         y=y, **kwargs)


def _summary(mixture, x, target):
  """Share of samples per nearest component, against what it should be."""
  nearest = np.argmin(((x[:, None] - mixture.means[None]) ** 2).sum(-1), axis=1)
  shares = np.bincount(nearest, minlength=mixture.num_components) / len(x)
  expected = mixture.weights if target is None else np.eye(mixture.num_components)[target]
  return {"shares": shares.round(4).tolist(), "expected": expected.round(4).tolist(),
          "max_share_error": float(np.abs(shares - expected).max())}


def _plot(path, mixture, panels):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(2, 3, figsize=(12, 8), sharex=True, sharey=True)
  colors = plt.get_cmap("tab10")
  for ax, (title, x) in zip(axes.flat, panels):
    nearest = np.argmin(((x[:, None] - mixture.means[None]) ** 2).sum(-1), axis=1)
    ax.scatter(x[:, 0], x[:, 1], s=2, c=[colors(k) for k in nearest], alpha=0.6)
    ax.scatter(mixture.means[:, 0], mixture.means[:, 1], marker="x", c="k", s=60)
    ax.set_title(title, fontsize=10)
    ax.set_aspect("equal")
  fig.suptitle("diffusion_jax: exact-denoiser samples of a 2-D Gaussian mixture")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def run(config, workdir: str) -> dict:
  """Samples every panel, writes `samples.png`, `samples.npz`, `summary.json`.

  Returns:
    The summary: per panel, the share of samples near each component.
  """
  out_dir = pathlib.Path(workdir)
  out_dir.mkdir(parents=True, exist_ok=True)
  mixture = oracles.GaussianMixture(config.data.weights, config.data.means,
                                    config.data.stds)
  base = schedules.make_schedule(config.diffusion.schedule,
                                 config.diffusion.num_timesteps)
  rng = jax.random.key(config.seed)
  data, _ = mixture.sample(jax.random.fold_in(rng, 0), config.sample.num)
  drawn = [("training data", np.asarray(data))]
  summary = {}
  for i, (title, kwargs, target) in enumerate(_panels(config, mixture, base)):
    x = np.asarray(_draw(config, mixture, base, kwargs, jax.random.fold_in(rng, i + 1)))
    drawn.append((title, x))
    summary[title] = _summary(mixture, x, target)
  _plot(out_dir / "samples.png", mixture, drawn)
  np.savez(out_dir / "samples.npz", **{f"panel{i}": x for i, (_, x) in enumerate(drawn)})
  (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary
