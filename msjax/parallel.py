"""Scale-out with JAX's own runtime: one `data` mesh axis over every device of every process.

- `initialize(config.distributed)`: `jax.distributed.initialize()` when asked ("auto": on SLURM,
  Cloud TPU and other environments JAX detects; "explicit": coordinator address, process count and
  id from the config; "off": single process). Must run before any other JAX call.
- Batches: each process samples only its own groups (one exam of 12 patches per group, see
  msjax/data/pipeline.py) and the global array is assembled from process-local pieces, sharded
  along `data`. Parameters and optimizer state are replicated; XLA inserts the gradient
  all-reduce. The training step pins these shardings (in_shardings/out_shardings); validation
  splits each patch batch along `data` the same way. The same code runs on one device (a mesh of
  one).
- Preemption: each process may receive SIGTERM at a slightly different step, so the decision to
  stop is agreed across processes (any process asking stops all at the same step).
"""
from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_NTASKS")


def initialize(dist) -> None:
  """dist: a ConfigDict with mode ('off' | 'auto' | 'explicit'), coordinator_address,
  num_processes, process_id."""
  mode = str(dist.mode)
  if mode == "off" or jax.distributed.is_initialized():
    return
  if mode == "auto":
    in_slurm = all(v in os.environ for v in _SLURM_VARS) and int(os.environ["SLURM_NTASKS"]) > 1
    asked = in_slurm or "JAX_COORDINATOR_ADDRESS" in os.environ or "TPU_WORKER_ID" in os.environ \
        or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ
    if not asked:
      return  # a single process: nothing to join
    jax.distributed.initialize()
  elif mode == "explicit":
    jax.distributed.initialize(coordinator_address=dist.coordinator_address,
                               num_processes=int(dist.num_processes),
                               process_id=int(dist.process_id))
  else:
    raise ValueError(f"distributed.mode must be off, auto or explicit, got {mode!r}")
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def data_mesh() -> Mesh:
  return Mesh(np.array(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree, mesh: Mesh):
  """Places identical host values on every device (each process passes the same values)."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      tree)


def abstract_replicated(abstract_tree, mesh: Mesh):
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      abstract_tree)


def shard_batch(x: np.ndarray, mesh: Mesh):
  """A batch every process holds whole -> a global array split along `data` (each process
  contributes the shards of its own devices)."""
  return jax.make_array_from_callback(x.shape, batch_sharding(mesh), lambda index: x[index])


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Process-local numpy batch -> global arrays sharded along `data` (leading axis)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def any_process(flag: bool) -> bool:
  """True on every process if any process passes True (a collective: all processes must call)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.asarray(multihost_utils.process_allgather(np.array(flag, np.int32))).any())


def host(x):
  """A replicated global array as a host numpy value (works when other processes hold shards)."""
  return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def is_main_process() -> bool:
  return jax.process_index() == 0
