"""Orbax checkpoints: params, optimizer state, data-iterator state and run metadata (step, config).

Layout of a workdir: `checkpoints/<step>/` (the last `keep` ones), `best/<step>/` (the best by
validation Dice) and `averaged/<step>/` (train.average_last > 1: the mean of the params of the
last checkpoints, `average`). Orbax writes each step into a temporary folder and renames it when
complete, so an interrupted save is never listed as a checkpoint; `cleanup_tmp_directories`
removes such leftovers when the manager opens.

Resume order (one place, msjax/train/state.py): this workdir's latest checkpoint, then
`init_from` (transfer of a pretraining encoder), then a fresh initialisation.

What reads a finished run (predict, segment, the composite jobs, `init_from`) reads
`find_checkpoint_dir`'s choice: the workdir's best/ checkpoint (best validation Dice) when the
run validated, else its averaged/ checkpoint when it averaged, else the latest of checkpoints/.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from msjax import errors

CHECKPOINTS, BEST, AVERAGED = "checkpoints", "best", "averaged"


def manager(workdir: str, *, keep: int = 2, best: bool = False,
            folder: str | None = None) -> ocp.CheckpointManager:
  """checkpoints/ (the last `keep` steps), best/ (best=True: the best validation Dice) or another
  folder of one checkpoint (`folder`, e.g. AVERAGED)."""
  folder = folder or (BEST if best else CHECKPOINTS)
  directory = os.path.abspath(os.path.join(workdir, folder))
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep if folder == CHECKPOINTS else 1, create=True,
      cleanup_tmp_directories=True,
      best_fn=(lambda m: m["val_dice"]) if best else None, best_mode="max",
      keep_checkpoints_without_metrics=not best)
  return ocp.CheckpointManager(directory, options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: dict, data_state: dict, meta: dict,
         metrics: dict | None = None) -> None:
  mngr.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(state["params"]),
      opt_state=ocp.args.StandardSave(state["opt_state"]),
      data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)), metrics=metrics)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: dict):
  """Restores (state, data-iterator state, meta) into the shapes/dtypes/shardings of
  `abstract_state` (from jax.eval_shape: nothing is allocated twice)."""
  try:
    r = mngr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_state["params"]),
        opt_state=ocp.args.StandardRestore(abstract_state["opt_state"]),
        data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
  except ValueError as e:
    if "do not match" not in str(e):
      raise
    raise errors.InvalidInputError(
        f"{mngr.directory}/{step}: this checkpoint's training state has another structure than "
        "this run's (another network, freezing strategy, or an optimizer state written by an "
        "msjax before the trainable-only optimizer state): resume it with the settings and msjax "
        "that wrote it, or train in a new workdir (its parameters still serve predict, segment "
        "and init_from)") from e
  state = {"params": r["params"], "opt_state": r["opt_state"],
           "step": jax.numpy.asarray(step, jax.numpy.int32)}
  return state, r["data"], r["meta"]


def abstract_params(mngr: ocp.CheckpointManager, step: int, sharding=None):
  """The params saved at `step` as jax.ShapeDtypeStruct leaves, from the checkpoint's metadata
  alone, placed by `sharding` (default: this process's first device)."""
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      mngr.item_metadata(step)["params"])


def average(mngr: ocp.CheckpointManager, steps: list[int], abstract_params):
  """The mean of the params saved at `steps` in `mngr`, in the shapes, dtypes and shardings of
  `abstract_params` (jax.ShapeDtypeStruct leaves), accumulated in float32."""
  total = None
  for step in steps:
    params = mngr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params)))["params"]
    params = jax.tree.map(lambda x: x.astype(jax.numpy.float32), params)
    total = params if total is None else jax.tree.map(jax.numpy.add, total, params)
  return jax.tree.map(lambda t, a: (t / len(steps)).astype(a.dtype), total, abstract_params)


def find_checkpoint_dir(path: str) -> str:
  """The checkpoint folder a finished run is read from. Given a run's workdir: its best/ folder
  (the step with the best validation Dice) when the run validated and wrote one, else its
  averaged/ folder (the mean of its last checkpoints) when it averaged, else its checkpoints/
  folder (whose latest step is read). A checkpoints/, best/ or averaged/ folder given directly is
  used as it is."""
  path = os.path.abspath(os.path.expanduser(path))
  for candidate in (os.path.join(path, BEST), os.path.join(path, AVERAGED),
                    os.path.join(path, CHECKPOINTS), path):
    if os.path.isdir(candidate) and any(d.isdigit() for d in os.listdir(candidate)):
      return candidate
  raise FileNotFoundError(f"{path}: no orbax checkpoint found (expected <workdir>/checkpoints/<step>)")


def source_task(path: str) -> str | None:
  """The task ('position', 'segmentation') a finished run or shipped model was trained for, from
  its metadata alone (no weights read)."""
  from msjax import shipped
  path = os.path.abspath(os.path.expanduser(path))
  if shipped.is_shipped(path):
    return shipped.read_bundle(path).get("task")
  return run_meta(path).get("task")


def run_meta(path: str) -> dict:
  """The metadata saved with a run's latest checkpoint (task, mode, the run's config), no
  weights read."""
  handlers = {"meta": ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(find_checkpoint_dir(path),
                             options=ocp.CheckpointManagerOptions(read_only=True),
                             item_names=tuple(handlers), item_handlers=handlers) as m:
    meta = m.restore(m.latest_step(), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  return meta["meta"]


def restore_params(path: str, sharding=None):
  """Params and meta of the latest step in find_checkpoint_dir(path) (so a workdir's
  best-validation checkpoint when it has one), onto this process's devices; also its folder.

  No target structure is needed: shapes and dtypes come from the checkpoint's metadata, so a
  checkpoint written by N processes restores in one (and vice versa).

  A shipped model's folder (msjax/shipped/) gives its float16 weights, hash-checked, in the
  network's parameter dtype, on the default device."""
  from msjax import shipped
  if shipped.is_shipped(os.path.abspath(os.path.expanduser(path))):
    return shipped.restore_params(os.path.abspath(os.path.expanduser(path)))
  directory = find_checkpoint_dir(path)
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  # every item a training checkpoint holds gets its handler, so that orbax knows what the items
  # it is not asked for are (else it warns once per item and call); only params and meta are read
  handlers = {"params": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
              "opt_state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                             item_names=tuple(handlers), item_handlers=handlers) as m:
    step = m.latest_step()
    abstract = abstract_params(m, step, sharding)
    r = m.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract),
                                                meta=ocp.args.JsonRestore()))
  return r["params"], r["meta"], os.path.join(directory, str(step))
