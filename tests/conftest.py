"""Shared fixtures: a tiny synthetic cohort written to disk once per test session."""
import os

import pytest

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


def needs_lesjak():
  return pytest.mark.skipif(not os.path.isdir(LESJAK_MNI),
                            reason=f"real Lesjak data not found at {LESJAK_MNI} "
                                   "(../shared/data beside the project root)")
