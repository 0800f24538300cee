"""The train state: a pytree of params, optimizer state, EMA params, step, rng.

Initialised abstractly (`jax.eval_shape`), then sharded: the jitted init
writes every array straight into its target sharding, so no device ever
holds the whole state unless the rules say so.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from diffusion_jax import diffusion, parallel, platform
from diffusion_jax.inference.loading import ema_key


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
  # Recent losses per timestep, for importance-sampled timesteps
  # (diffusion.timestep_sampler = "loss_second_moment"); None when uniform.
  loss_history: Optional[diffusion.LossHistory] = None


def init_state(params: Any, optimizer: optax.GradientTransformation, ema_rates,
               rng: jax.Array, loss_history_timesteps: Optional[int] = None) -> TrainState:
  """A fresh state around `params`.

  Args:
    params: the initial parameters (EMAs start from them too).
    optimizer: the optax transformation.
    ema_rates: the EMA rates to keep.
    rng: the run's PRNG key (each step folds its index in).
    loss_history_timesteps: T, to keep a `diffusion.LossHistory` for
      importance-sampled timesteps; None for none.
  """
  history = (None if loss_history_timesteps is None
             else diffusion.init_loss_history(loss_history_timesteps))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    ema_params={ema_key(r): params for r in ema_rates}, rng=rng,
                    nonfinite_streak=jnp.zeros((), jnp.int32),
                    nonfinite_total=jnp.zeros((), jnp.int32), loss_history=history)


def state_shardings(mesh: Mesh, abstract_state: TrainState) -> TrainState:
  """Params-shaped leaves follow the FSDP rule; scalars are replicated."""
  return parallel.tree_shardings(mesh, abstract_state)


def create_train_state(init_params: Callable[[jax.Array], Any],
                       optimizer: optax.GradientTransformation, ema_rates, seed: int,
                       mesh: Mesh, params: Any = None,
                       loss_history_timesteps: Optional[int] = None):
  """(state, shardings): a new state initialised directly into its shardings.

  Args:
    init_params: `init_params(rng)` -> the model's initial parameters.
    optimizer, ema_rates, loss_history_timesteps: as in `init_state`.
    seed: the run's seed (parameters and the training key derive from it).
    mesh: the devices.
    params: start from these parameters instead (fine-tuning), passed as an
      argument of the compiled init, not folded into it.
  """
  def init(given):
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
    start = init_params(init_rng) if given is None else given
    return init_state(start, optimizer, ema_rates, train_rng, loss_history_timesteps)
  abstract = jax.eval_shape(init, params)
  shardings = state_shardings(mesh, abstract)
  compiled = jax.jit(init, out_shardings=shardings,
                     compiler_options=platform.run_once_compiler_options())
  return compiled(params), shardings


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying their target shardings (for restoring)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def weights(state: TrainState, field: str) -> Any:
  """The weights a field path names: "params" or "ema_params/<rate key>"
  (`inference.loading.weights_field`)."""
  if field == "params":
    return state.params
  group, key = field.split("/")
  return getattr(state, group)[key]


def count_params(params: Any) -> int:
  return sum(int(jnp.size(p)) for p in jax.tree.leaves(params))
