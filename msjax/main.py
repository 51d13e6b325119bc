"""Entry point: `python -m msjax.main --config configs/<name>.py[:variant] --workdir DIR`.

`config.mode` picks the stage; each stage is one importable function `run(config, workdir)`.
Any config field can be overridden on the command line, e.g. `--config.seed=3`.
"""
import importlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/<name>.py[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: runs/<config name>).")

# mode -> module whose `run(config, workdir)` carries it out (imported lazily: modes pull in
# different dependencies, e.g. preprocessing needs the optional SimpleITK extra).
MODES = {
    "synthetic": "msjax.data.synthetic_mode",
    "inspect": "msjax.data.inspect_mode",
    "pretrain": "msjax.train.loop",
    "finetune": "msjax.train.loop",
    "predict": "msjax.infer.predict",
    "evaluate": "msjax.evaluate.evaluate_mode",
    "experiment": "msjax.experiment",
    "leave_one_out": "msjax.leave_one_out",
    "demo": "msjax.demo",
    "preprocess": "msjax.preprocess.run",
    "benchmark": "msjax.benchmark",
}


def quiet_libraries():
  """Orbax logs every save step at INFO through absl; keep its warnings, drop the chatter so that
  msjax's progress lines stay readable."""
  import logging as py_logging
  noisy = ("orbax", "grain", "jax/_src")
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= py_logging.WARNING or not any(n in r.pathname for n in noisy))


def setup_compilation_cache():
  """XLA compiles of the 3D network take tens of seconds on CPU: keep them on disk so the next
  run of the same shapes starts at once. MSJAX_COMPILATION_CACHE='' turns it off."""
  import jax
  path = os.environ.get("MSJAX_COMPILATION_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "msjax", "xla"))
  if path:
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def run_mode(config, workdir: str):
  if config.mode not in MODES:
    raise app.UsageError(f"unknown mode {config.mode!r}; known: {sorted(MODES)}")
  if "distributed" in config:  # before any other JAX call
    from msjax import parallel
    parallel.initialize(config.distributed)
  module = importlib.import_module(MODES[config.mode])
  os.makedirs(workdir, exist_ok=True)
  return module.run(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config configs/demo.py")
  workdir = _WORKDIR.value or os.path.join("runs", config.mode)
  logging.set_verbosity(logging.INFO)
  quiet_libraries()
  setup_compilation_cache()
  logging.info("mode %s, workdir %s", config.mode, os.path.abspath(workdir))
  from msjax.data.nifti import InvalidInputError
  try:
    run_mode(config, workdir)
  except InvalidInputError as e:  # bad input: the message names the file and the problem
    print(f"msjax {config.mode}: invalid input: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
