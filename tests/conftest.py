"""Shared fixtures: a tiny synthetic cohort written to disk once per test session."""
import os
import tempfile

# Tests compile many small variants of the network: a lower XLA optimisation level halves compile
# time (runtime is irrelevant at these sizes), and the persistent cache makes a second compile of
# the same computation (a restarted run, another test) nearly free. Set before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ.setdefault("MSJAX_COMPILATION_CACHE", tempfile.mkdtemp(prefix="msjax-xla-"))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["MSJAX_COMPILATION_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

from msjax.data import synthetic

REAL_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
LESJAK_MNI = os.path.abspath(os.path.join(REAL_DATA, "lesjak_mni"))

# Small enough that a full network at base width 4 compiles and steps in seconds on 2 cores.
TINY = synthetic.SyntheticSpec(n_ms=4, n_non_ms=2, n_test=1, shape=(40, 40, 40), spacing_mm=4.0,
                               lesion_radius_vox=(1.0, 3.0), seed=0)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
  folder = tmp_path_factory.mktemp("tiny_cohort")
  return synthetic.write_synthetic_cohort(str(folder), TINY, log=lambda *a: None)


@pytest.fixture(scope="session")
def trained(tiny_cohort, tmp_path_factory):
  """A smoke-trained segmentation network and its bundle (VAN, 16³ patches, width 4, 3 steps)."""
  from msjax.train import loop
  w = str(tmp_path_factory.mktemp("finetune"))
  loop.train(load_config("finetune", "smoke", **{"data.cohort": tiny_cohort.root,
                                                 "train.steps": 3, "train.eval_every": 3}), w)
  return w


@pytest.fixture(scope="session")
def pretrained(tiny_cohort, tmp_path_factory):
  """A 40-step position pretraining on the tiny cohort: (workdir, train summary). Read only."""
  from msjax.train import loop
  w = str(tmp_path_factory.mktemp("pretrain"))
  config = load_config("pretrain", "smoke", **{"data.cohort": tiny_cohort.root, "train.steps": 40,
                                               "train.eval_every": 20, "train.log_every": 10,
                                               "train.checkpoint_every": 20, "train.lr": 1e-3})
  summary = loop.train(config, w)
  return w, summary


def finetune_smoke(tiny_cohort, w, **overrides):
  """A 2-step smoke fine-tune on the tiny cohort into w: (config, train summary)."""
  from msjax.train import loop
  base = {"data.cohort": tiny_cohort.root, "train.steps": 2, "train.eval_every": 0,
          "train.checkpoint_every": 1, "train.log_every": 1}
  base.update(overrides)
  config = load_config("finetune", "smoke", **base)
  return config, loop.train(config, w)


def needs_lesjak():
  return pytest.mark.skipif(not os.path.isdir(LESJAK_MNI),
                            reason=f"real Lesjak data not found at {LESJAK_MNI} "
                                   "(../shared/data beside the project root)")


def onednn_installed() -> bool:
  """oneDNN and a C++ compiler are there, so msjax's CPU extension (oneDNN convolutions, the
  norm kernels) can be built: tests of those paths skip without them."""
  import shutil

  from msjax.ops import onednn
  return onednn.find_onednn() is not None and bool(shutil.which("g++") or shutil.which("c++"))


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, variant: str = "", **overrides):
  """configs/<name>.py:variant (the repository's configs: the packaged ones and the lab's), with
  dotted overrides ({'train.steps': 3})."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      f"configs_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def pytest_collection_modifyitems(config, items):
  """The slow tier first (a stable sort: file order within each tier): with two workers (-n 2)
  the minute-long tests start early and the short ones fill in around them, so neither worker
  idles at the end waiting for the other's last long test."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)
