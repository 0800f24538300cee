"""Guidance as function composition.

- `classifier(log_prob_fn, scale)` makes a `cond_fn`: scale * grad_x log p(y | x_t, t)
  by `jax.grad`; the samplers apply it as a mean shift (DDPM) or a score shift
  (DDIM). CLIP guidance and any other gradient are `cond_fn`s too, and
  `combine` adds several.
- `classifier_free(model_fn, scale, null_cond)` wraps a model function: one
  doubled batch, eps(x | null) + scale * (eps(x | c) - eps(x | null)) on the eps
  channels, the remaining (variance) channels from the conditional half.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional

import jax
import jax.numpy as jnp


def classifier(log_prob_fn: Callable, scale: float = 1.0) -> Callable:
  """A `cond_fn` from a noisy classifier's log-probability of the wanted label.

  Args:
    log_prob_fn: `log_prob_fn(x_t, t, **cond) -> [B]`, log p(y | x_t, t) of each
      example's wanted label (which it reads from `cond`, e.g. `y`).
    scale: s, the guidance scale.

  Returns:
    `cond_fn(x_t, t, **cond) -> [B, ...]`, s * grad_x log p(y | x_t, t).
  """
  def cond_fn(x_t, t, **cond):
    def total_log_prob(x):  # examples are independent: the sum's gradient
      return jnp.sum(log_prob_fn(x, t, **cond))  # is each one's own gradient
    return scale * jax.grad(total_log_prob)(x_t.astype(jnp.float32))
  return cond_fn


def log_prob_from_logits(logits_fn: Callable, label_key: str = "y") -> Callable:
  """Turns `logits_fn(x_t, t) -> [B, K]` into a `log_prob_fn` for `classifier`.

  The wanted labels are read from `cond[label_key]` ([B] ints).
  """
  def log_prob_fn(x_t, t, **cond):
    log_probs = jax.nn.log_softmax(logits_fn(x_t, t).astype(jnp.float32), axis=-1)
    labels = cond[label_key]
    return jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  return log_prob_fn


def combine(*cond_fns: Optional[Callable]) -> Optional[Callable]:
  """The sum of several guidance gradients (None entries are skipped)."""
  fns = [f for f in cond_fns if f is not None]
  if not fns:
    return None
  if len(fns) == 1:
    return fns[0]

  def cond_fn(x_t, t, **cond):
    return sum(f(x_t, t, **cond) for f in fns)
  return cond_fn


def _doubled(cond: Mapping, null_cond: Mapping) -> dict:
  """Each conditioning array twice along the batch: as given, then nulled."""
  missing = set(null_cond) - set(cond)
  if missing:
    raise ValueError(f"classifier-free guidance: null_cond names {sorted(missing)} "
                     f"but the sampler was given only {sorted(cond)}")
  doubled = {}
  for key, value in cond.items():
    value = jnp.asarray(value)
    null = jnp.broadcast_to(jnp.asarray(null_cond.get(key, value), value.dtype),
                            value.shape)
    doubled[key] = jnp.concatenate([value, null], axis=0)
  return doubled


def classifier_free(model_fn: Callable, scale: float,
                    null_cond: Mapping[str, jax.Array],
                    eps_channels: Optional[int] = None) -> Callable:
  """Classifier-free guidance as a wrapped model function (GLIDE's scale).

  Args:
    model_fn: `model_fn(x_t, t, **cond)`.
    scale: s in eps(x|0) + s (eps(x|c) - eps(x|0)); 1 is the plain conditional
      model, 0 the unconditional one (Ho & Salimans' w is s - 1).
    null_cond: for each conditioning key to drop, its "null" value (e.g. the
      null class label), broadcast to the batch. Keys not named are passed
      unchanged to both halves (e.g. a low-resolution image).
    eps_channels: how many leading output channels are guided; default the
      channels of x_t (the rest, e.g. learned variance, come from the
      conditional half).

  Returns:
    A model function with the same signature and output shape.
  """
  def guided_model_fn(x_t, t, **cond):
    batch = x_t.shape[0]
    output = model_fn(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]),
                      **_doubled(cond, null_cond))
    conditional, unconditional = output[:batch], output[batch:]
    channels = x_t.shape[-1] if eps_channels is None else eps_channels
    eps_c, eps_u = conditional[..., :channels], unconditional[..., :channels]
    guided = eps_u + scale * (eps_c - eps_u)
    return jnp.concatenate([guided, conditional[..., channels:]], axis=-1)
  return guided_model_fn


def switched(model_fn: Callable, switch_t, after: Mapping[str, jax.Array]) -> Callable:
  """A prompt schedule: `model_fn` whose conditioning becomes `after` once the
  (original) timestep drops below `switch_t`.

  Args:
    model_fn: `model_fn(x_t, t, **cond)`; wrap it around classifier-free
      guidance, not inside it, so both halves switch.
    switch_t: timesteps t < switch_t use `after`.
    after: the later conditioning, [B, ...] per key it replaces.
  """
  def scheduled_model_fn(x_t, t, **cond):
    late = t < switch_t  # [B]
    mixed = dict(cond)
    for key, value in after.items():
      pick = late.reshape(late.shape + (1,) * (jnp.ndim(value) - 1))
      mixed[key] = jnp.where(pick, value, cond[key])
    return model_fn(x_t, t, **mixed)
  return scheduled_model_fn


def clip(image_embed_fn: Callable, scale: float = 1.0,
         logit_scale: float = 4.605170185988092, text_key: str = "clip_text") -> Callable:
  """CLIP guidance as a `cond_fn` (GLIDE's): the gradient with respect to x_t
  of exp(logit_scale) <normalised image embedding, normalised text embedding>,
  times `scale`.

  Args:
    image_embed_fn: `(x_t, t) -> [B, D]`, the noised CLIP's normalised image
      embeddings.
    scale: the guidance scale.
    logit_scale: log(100), the noised CLIP's.
    text_key: where `cond` holds the normalised text embeddings [B, D].
  """
  def log_prob_fn(x_t, t, **cond):
    return jnp.exp(logit_scale) * jnp.sum(image_embed_fn(x_t, t) * cond[text_key], axis=-1)
  return classifier(log_prob_fn, scale)
