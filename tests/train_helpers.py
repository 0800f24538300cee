"""Shared pieces of the training tests (also run as a multi-process worker)."""
import json
import os
import sys

import jax
import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
if ROOT not in sys.path:  # the package and configs/ when run as a worker script
  sys.path.insert(0, ROOT)


def quick_config(**overrides):
  """configs/shapes_class_cond.py:quick with `section.field=value` overrides."""
  from configs import shapes_class_cond
  config = shapes_class_cond.get_config("quick")
  config.data.data_dir = data_dir()
  for key, value in overrides.items():
    section, field = key.split(".", 1)
    setattr(config[section], field, value)
  return config


def data_dir():
  """.cache/test_tfds/<hash of the dataset generators>: fresh data when they change."""
  import hashlib
  from diffusion_jax.data import digits, shapes
  sources = b"".join(open(m.__file__, "rb").read() for m in (shapes, digits))
  return os.path.join(ROOT, ".cache", "test_tfds", hashlib.sha256(sources).hexdigest()[:12])


def run_steps(config, mesh, num_steps, process_index=None, process_count=None):
  """Trains `num_steps` from a fresh state on `mesh`; returns (state, losses)."""
  from diffusion_jax import parallel
  from diffusion_jax.data.pipeline import ImageData
  from diffusion_jax.training import loop, state as state_lib, tasks
  data = ImageData(config.data, seed=config.seed, global_batch_size=config.data.batch_size,
                   process_index=process_index, process_count=process_count)
  task = tasks.make_task(config, data.info)
  state, shardings = state_lib.create_train_state(
      task.init_params, task.optimizer, config.train.ema_rates, config.seed, mesh)
  step_fn = loop.compile_step(task, mesh, shardings)
  losses = []
  for step in range(num_steps):
    state, metrics = step_fn(state, parallel.global_batch(data.local_batch(step), mesh))
    losses.append(float(metrics["loss"]))
  return state, losses


def gathered_params(state):
  """Every parameter as a host numpy array, flattened to name -> array."""
  from jax.experimental import multihost_utils
  params = multihost_utils.process_allgather(state.params, tiled=True)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def worker_main(process_id, num_processes, port, out_path, num_steps):
  """One process of a multi-process run on localhost (gloo CPU collectives)."""
  from diffusion_jax import parallel
  parallel.initialize_distributed(f"localhost:{port}", num_processes, process_id)
  config = quick_config()
  config.data.batch_size = 8
  mesh = parallel.make_mesh(data=-1, fsdp=2)
  state, losses = run_steps(config, mesh, num_steps)
  params = gathered_params(state)
  if process_id == 0:
    np.savez(out_path, **params)
    with open(out_path + ".json", "w") as f:
      json.dump({"losses": losses, "devices": jax.device_count()}, f)


if __name__ == "__main__":
  worker_main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
              int(sys.argv[5]))
