"""Meshes, sharding rules and multi-host set-up.

One code path from one CPU device to a multi-host pod: a 2-D mesh with axes
("data", "fsdp"); the batch is sharded over both axes; parameters (and
everything shaped like them: optimizer moments, EMA) are either replicated
or, when the fsdp axis is larger than 1, sharded along their largest axis that
the fsdp size divides.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA, FSDP = "data", "fsdp"
BATCH_AXES = (DATA, FSDP)


def make_mesh(data: int = -1, fsdp: int = 1,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A ("data", "fsdp") mesh over `devices` (all devices by default).

  Args:
    data: size of the data axis; -1 takes all the devices fsdp leaves. In a
      single process, data x fsdp may be fewer than the devices: the mesh
      then takes the first data x fsdp of them (e.g. `mesh.data=1` trains on
      one device); a multi-process job uses every device.
    fsdp: size of the parameter-sharding axis.
    devices: the devices, in mesh order.
  """
  devices = list(jax.devices() if devices is None else devices)
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f"mesh: fsdp={fsdp} does not divide the {len(devices)} devices")
  if data == -1:
    data = len(devices) // fsdp
  if data < 1 or data * fsdp > len(devices) or (
      data * fsdp < len(devices) and jax.process_count() > 1):
    raise ValueError(f"mesh: data={data} x fsdp={fsdp} != {len(devices)} devices")
  if data * fsdp < len(devices):
    logging.info("mesh: %d of the %d devices", data * fsdp, len(devices))
  return Mesh(np.asarray(devices[:data * fsdp]).reshape(data, fsdp), (DATA, FSDP))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device of the mesh."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
  devices = mesh.devices.size
  if global_batch % devices:
    raise ValueError(f"batch size {global_batch} is not divisible by the "
                     f"{devices} devices of the mesh {dict(mesh.shape)}")
  if global_batch % jax.process_count():
    raise ValueError(f"batch size {global_batch} is not divisible by the "
                     f"{jax.process_count()} processes")


def param_spec(shape: Sequence[int], fsdp_size: int, min_size: int = 2 ** 12) -> P:
  """FSDP rule: shard the largest axis that fsdp divides; replicate small arrays."""
  if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for axis in np.argsort(shape)[::-1]:
    if shape[axis] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[axis] = FSDP
      return P(*spec)
  return P()


def tree_shardings(mesh: Mesh, tree: Any, min_size: int = 2 ** 12) -> Any:
  """A NamedSharding per leaf of `tree` (arrays or ShapeDtypeStructs)."""
  fsdp_size = mesh.shape[FSDP]
  return jax.tree.map(
      lambda leaf: NamedSharding(mesh, param_spec(np.shape(leaf), fsdp_size, min_size)),
      tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Host or single-device arrays (the same on every process) as global arrays
  replicated over `mesh`; arrays already on `mesh` are left as they are."""
  sharding = replicated(mesh)

  def place(leaf):
    if isinstance(leaf, jax.Array) and leaf.sharding.device_set == sharding.device_set:
      return leaf
    value = np.asarray(leaf)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
  return jax.tree.map(place, tree)


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's examples -> global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           local_device_ids: Optional[Sequence[int]] = None) -> bool:
  """Calls `jax.distributed.initialize` when asked to; returns whether it did.

  Asked means: a coordinator address is given (flag or the environment
  variable DIFFUSION_JAX_COORDINATOR, with DIFFUSION_JAX_NUM_PROCESSES and
  DIFFUSION_JAX_PROCESS_ID), or the environment is a TPU pod / SLURM job,
  which `jax.distributed.initialize()` detects itself (set
  DIFFUSION_JAX_DISTRIBUTED=auto).

  A process that dies (SIGKILL, a lost node) is noticed by the others after
  DIFFUSION_JAX_HEARTBEAT_TIMEOUT seconds without its heartbeat (default
  JAX's, 100): they then abort instead of waiting in a collective forever.
  """
  env = os.environ
  timeouts = {}
  if env.get("DIFFUSION_JAX_HEARTBEAT_TIMEOUT"):
    timeouts["heartbeat_timeout_seconds"] = int(env["DIFFUSION_JAX_HEARTBEAT_TIMEOUT"])
  coordinator_address = coordinator_address or env.get("DIFFUSION_JAX_COORDINATOR")
  if coordinator_address:
    num_processes = num_processes or int(env["DIFFUSION_JAX_NUM_PROCESSES"])
    process_id = process_id if process_id is not None else int(env["DIFFUSION_JAX_PROCESS_ID"])
    # Cross-process collectives on CPU devices need gloo; harmless elsewhere.
    # (Querying the backend here would initialise it too early.)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               local_device_ids=local_device_ids, **timeouts)
  elif env.get("DIFFUSION_JAX_DISTRIBUTED") == "auto":
    jax.distributed.initialize(**timeouts)
  else:
    return False
  logging.info("process %d of %d, %d local of %d devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
