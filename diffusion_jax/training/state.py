"""The train state: a pytree of params, optimizer state, EMA params, step, rng.

Initialised abstractly (`jax.eval_shape`), then sharded: the jitted init
writes every array straight into its target sharding, so no device ever
holds the whole state unless the rules say so.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from diffusion_jax import parallel


def ema_key(rate: float) -> str:
  return f"{rate:g}"


@flax.struct.dataclass
class TrainState:
  """Everything a training run needs to continue exactly where it left off."""
  step: jax.Array  # int32 []
  params: Any
  opt_state: Any
  ema_params: dict  # ema_key(rate) -> params averaged at that rate
  rng: jax.Array  # uint32 [2], a raw PRNG key (checkpointable)
  nonfinite_streak: jax.Array  # int32 [], consecutive skipped (non-finite) steps
  nonfinite_total: jax.Array  # int32 [], all skipped steps of the run


def init_state(init_params: Callable[[jax.Array], Any], optimizer: optax.GradientTransformation,
               ema_rates, seed: int) -> TrainState:
  """A fresh state; `init_params(rng)` returns the model's params."""
  rng = jax.random.PRNGKey(seed)
  init_rng, train_rng = jax.random.split(rng)
  params = init_params(init_rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    ema_params={ema_key(r): params for r in ema_rates}, rng=train_rng,
                    nonfinite_streak=jnp.zeros((), jnp.int32),
                    nonfinite_total=jnp.zeros((), jnp.int32))


def state_shardings(mesh: Mesh, abstract_state: TrainState) -> TrainState:
  """Params-shaped leaves follow the FSDP rule; scalars are replicated."""
  return parallel.tree_shardings(mesh, abstract_state)


def create_train_state(init_params, optimizer, ema_rates, seed: int, mesh: Mesh):
  """(state, shardings): the state initialised directly into its shardings."""
  def init():
    return init_state(init_params, optimizer, ema_rates, seed)
  abstract = jax.eval_shape(init)
  shardings = state_shardings(mesh, abstract)
  return jax.jit(init, out_shardings=shardings)(), shardings


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying their target shardings (for restoring)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def count_params(params: Any) -> int:
  return sum(int(jnp.size(p)) for p in jax.tree.leaves(params))
