"""The optimizer: AdamW with linear warm-up and global-norm gradient clipping."""
from __future__ import annotations

import optax


def learning_rate_schedule(optim_config) -> optax.Schedule:
  """Linear warm-up from 0 to `lr` over `warmup_steps`, then constant."""
  if optim_config.warmup_steps <= 0:
    return optax.constant_schedule(optim_config.lr)
  return optax.linear_schedule(0.0, optim_config.lr, optim_config.warmup_steps)


def make_optimizer(optim_config) -> optax.GradientTransformation:
  """optax chain from `config.optim` (lr, warmup_steps, b1, b2, weight_decay,
  grad_clip; grad_clip <= 0 disables clipping)."""
  parts = []
  if optim_config.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_config.grad_clip))
  parts.append(optax.adamw(learning_rate_schedule(optim_config), b1=optim_config.b1,
                           b2=optim_config.b2, weight_decay=optim_config.weight_decay))
  return optax.chain(*parts)
