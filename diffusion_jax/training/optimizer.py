"""The optimizer: AdamW with linear warm-up, a decay, and global-norm clipping."""
from __future__ import annotations

import optax

LR_SCHEDULES = ("constant", "cosine", "linear")


def learning_rate_schedule(optim_config, num_steps: int = 0) -> optax.Schedule:
  """Linear warm-up from 0 to `lr` over `warmup_steps`, then `optim.schedule`:
  "constant"; "cosine" or "linear" decay to 0 at `num_steps` (the run's
  train.num_steps)."""
  lr, warmup = optim_config.lr, int(optim_config.warmup_steps)
  kind = optim_config.get("schedule", "constant")
  if kind not in LR_SCHEDULES:
    raise ValueError(f"optim.schedule is {kind!r}; choose one of {list(LR_SCHEDULES)}")
  if kind == "constant":
    if warmup <= 0:
      return optax.constant_schedule(lr)
    return optax.linear_schedule(0.0, lr, warmup)
  decay_steps = max(int(num_steps) - warmup, 1)
  decay = (optax.cosine_decay_schedule(lr, decay_steps) if kind == "cosine"
           else optax.linear_schedule(lr, 0.0, decay_steps))
  if warmup <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def make_optimizer(optim_config, num_steps: int = 0) -> optax.GradientTransformation:
  """optax chain from `config.optim` (lr, warmup_steps, schedule, b1, b2,
  weight_decay, grad_clip; grad_clip <= 0 disables clipping); `num_steps` is
  where a decaying schedule reaches 0."""
  parts = []
  if optim_config.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_config.grad_clip))
  parts.append(optax.adamw(learning_rate_schedule(optim_config, num_steps), b1=optim_config.b1,
                           b2=optim_config.b2, weight_decay=optim_config.weight_decay))
  return optax.chain(*parts)
