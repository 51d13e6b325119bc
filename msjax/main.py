"""Entry point: `msjax --config=<name>[:variant] --workdir DIR` (the installed command), or
`python -m msjax.main --config configs/<name>.py[:variant] --workdir DIR` from the repository.

`--config` takes a packaged config's name (`demo`, `finetune:smoke,bf16`: msjax/configs/) or a
path to a config file. `config.mode` picks the stage; each stage is one importable function
`run(config, workdir)`. Any config field can be overridden on the command line, e.g.
`--config.seed=3`.
"""
import contextlib
import importlib
import os
import shutil
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from msjax import cli, config_base, console

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A packaged config's name or a config file, with optional variants: "
    "demo, finetune:smoke, configs/<name>.py[:variant,...]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: runs/<config name>).")

# mode -> module whose `run(config, workdir)` carries it out (imported lazily: modes pull in
# different dependencies, e.g. preprocessing needs the optional SimpleITK extra).
MODES = {
    "synthetic": "msjax.data.synthetic",
    "inspect": "msjax.data.inspect",
    "pretrain": "msjax.train.loop",
    "finetune": "msjax.train.loop",
    "predict": "msjax.infer.predict",
    "evaluate": "msjax.evaluate.evaluate_mode",
    "experiment": "msjax.experiment",
    "leave_one_out": "msjax.leave_one_out",
    "release": "msjax.release",
    "demo": "msjax.demo",
    "preprocess": "msjax.preprocess.run",
    "segment": "msjax.segment",
    "longitudinal": "msjax.longitudinal.mode",
    "benchmark": "msjax.benchmark",
}


def quiet_libraries():
  """Orbax logs every save step at INFO through absl; keep its warnings, drop the chatter so that
  msjax's progress lines stay readable."""
  import logging as py_logging
  noisy = ("orbax", "grain", "jax/_src")

  def keep(r) -> bool:
    if not any(n in r.pathname for n in noisy):
      return True
    # orbax warns at every read of a checkpoint that it opens it read-only, as asked
    return r.levelno >= py_logging.WARNING and "read_only" not in str(r.msg) and \
        "read only" not in str(r.msg)
  logging.get_absl_handler().addFilter(keep)


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
  name = MODES[config.mode]
  if config.mode == "evaluate" and config.get("change_reference"):
    name = "msjax.longitudinal.evaluate"  # a longitudinal run's change maps against a reference
  module = importlib.import_module(name)
  from msjax import files
  new = not os.path.exists(workdir)
  files.writable_folder(workdir, "workdir")  # refused now, not after the work
  from msjax.errors import InvalidInputError, RunFailedError
  # one run per workdir; the processes of a multi-host job share theirs and are not locked
  multi = "distributed" in config and _process_count() > 1
  # segment's shards (--config.shard=K/N, a SLURM array) write their own exams side by side
  shard = (config_base.parse_shard(config.shard)  # None: segment refuses it, naming it
           if config.get("shard") and not config.get("merge") else None)
  lock = (contextlib.nullcontext() if multi else
          files.workdir_lock(workdir, f"mode {config.mode}", share=shard))
  try:
    with lock:
      return module.run(config, workdir)
  except RunFailedError:  # the workdir holds the record of why
    raise
  except InvalidInputError:  # a refused run leaves no workdir of its own behind
    if new:
      shutil.rmtree(workdir, ignore_errors=True)
    raise
  except Exception:
    if new:
      files.remove_empty_tree(workdir)
    raise


def _process_count() -> int:
  import jax
  return jax.process_count()


def resolve_config(value: str) -> str:
  """`demo:smoke` -> <package>/configs/demo.py:smoke; an existing file stays as it is; a
  `configs/<name>.py` that is not here (an installed msjax, run elsewhere) is the packaged one."""
  path, sep, variant = value.partition(":")
  if os.path.isfile(path):
    return value
  name = os.path.basename(path)[:-3] if path.endswith(".py") else path
  packaged = os.path.join(cli.PACKAGED_CONFIGS, f"{name}.py")
  if os.sep not in name and os.path.isfile(packaged):
    return packaged + sep + variant
  raise app.UsageError(f"--config {value}: no config file {path!r} and no packaged config named "
                       f"{name!r} (packaged: {', '.join(cli.packaged_configs())}; msjax --help)")


def resolve_argv(argv: list[str]) -> list[str]:
  """Rewrites --config NAME / --config=NAME before absl reads the flags."""
  out, i = list(argv), 1
  while i < len(out):
    arg = out[i]
    if arg in ("--config", "-config") and i + 1 < len(out):
      out[i + 1] = resolve_config(out[i + 1])
      i += 1
    elif arg.startswith(("--config=", "-config=")):
      flag, _, value = arg.partition("=")
      out[i] = f"{flag}={resolve_config(value)}"
    i += 1
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config configs/demo.py")
  workdir = _WORKDIR.value or os.path.join("runs", config.mode)
  console.setup(plain=flags.FLAGS.verbosity <= 0)  # absl's prefixes only when asked for (-v 1)
  quiet_libraries()
  setup_compilation_cache()
  logging.info("mode %s, workdir %s", config.mode, os.path.abspath(workdir))
  from msjax.errors import InvalidInputError
  try:
    run_mode(config, workdir)
  except InvalidInputError as e:  # bad input: the message names the file and the problem
    print(f"msjax {config.mode}: invalid input: {e}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print(f"msjax {config.mode}: interrupted. Finished outputs stay in {os.path.abspath(workdir)}; "
          "the same command continues from them.", file=sys.stderr)
    sys.exit(130)


def config_argument(argv: list[str]) -> str | None:
  for i, arg in enumerate(argv[1:], start=1):
    if arg in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith(("--config=", "-config=")):
      return arg.partition("=")[2]
  return None


def run():
  """The `msjax` console script."""
  try:
    argv = resolve_argv(sys.argv)
    config_path = config_argument(argv)
    if any(a in ("--help", "-h", "-help", "--helpshort") for a in argv[1:]):
      print(cli.config_help(config_path) if config_path else cli.usage())
      sys.exit(0)
    if config_path is None:
      print(cli.usage(), file=sys.stderr)
      sys.exit(2)
    cli.check_overrides(argv, config_path)
  except (app.UsageError, cli.BadCommandLine) as e:
    print(f"msjax: {e}", file=sys.stderr)
    sys.exit(2)
  app.run(main, argv=argv)


if __name__ == "__main__":
  run()
