"""What the msjax command says before any work (msjax/cli.py, msjax/main.py): help, one-line
refusals, nothing written for a command that cannot run."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from msjax import cli


def _msjax(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "msjax.main", *args], capture_output=True,
                        text=True, cwd=cwd, timeout=300)


def test_help_lists_every_mode_and_examples_and_exits_0():
  proc = _msjax("--help")
  assert proc.returncode == 0, proc.stderr
  for name in cli.packaged_configs():
    assert f"\n  {name} " in proc.stdout
  assert proc.stdout.count("msjax --config=") >= 3 and "segment" in proc.stdout
  assert "Try --helpfull" not in proc.stdout + proc.stderr


def test_a_modes_help_lists_its_fields_with_defaults_and_their_comments():
  proc = _msjax("--config=segment", "--help")
  assert proc.returncode == 0, proc.stderr
  lines = {line.split("=")[0].strip(): line for line in proc.stdout.splitlines() if " = " in line}
  assert "'robex'" in lines["preprocess.skull_strip"] and "ROBEX" in lines["preprocess.skull_strip"]
  assert "sliding window" in lines["predict.overlap"]  # the predict block's, not segment's own
  assert "preprocess the next exam" in lines["overlap"]


def test_a_typo_in_a_field_is_one_line_with_the_nearest_name(tmp_path):
  proc = _msjax("--config=segment", "--config.imput=x", f"--workdir={tmp_path}/w")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().count("\n") == 0 and "did you mean input?" in proc.stderr
  assert not os.path.exists(tmp_path / "w")


def test_a_missing_input_path_says_so_and_writes_nothing(tmp_path):
  (tmp_path / "patient01").mkdir()
  proc = _msjax("--config=segment", f"--config.input={tmp_path}/patient1",
                f"--workdir={tmp_path}/w")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "no such file or folder" in proc.stderr and "patient01" in proc.stderr
  assert not os.path.exists(tmp_path / "w")


def test_a_second_run_into_a_locked_workdir_is_refused_naming_the_first(tmp_path):
  """Two runs into one workdir would write the same outputs: the second is refused in one line
  naming the first's pid and mode, and the lock goes with the first run."""
  from msjax import files
  from msjax.errors import InvalidInputError
  with files.workdir_lock(str(tmp_path), "mode segment"):
    with pytest.raises(InvalidInputError, match=r"another msjax run .*pid \d+, mode segment"):
      with files.workdir_lock(str(tmp_path)):
        pass
  assert not os.path.exists(os.path.join(tmp_path, files.LOCK))
  with files.workdir_lock(str(tmp_path)):  # free again
    pass
  # through the command: exit 2, one line, the first run's files untouched
  (tmp_path / "kept.txt").write_text("first run")
  with files.workdir_lock(str(tmp_path), "mode segment"):
    p = _msjax("--config=synthetic:smoke", f"--workdir={tmp_path}")
  assert p.returncode == 2 and "another msjax run" in p.stderr and "Traceback" not in p.stderr
  assert (tmp_path / "kept.txt").read_text() == "first run"
  assert sorted(os.listdir(tmp_path)) == ["kept.txt"]



def test_the_shards_of_one_workdir_run_side_by_side_and_nothing_else_does(tmp_path):
  """segment's shards (--config.shard=K/N, one SLURM array into one OUT) share the workdir: two
  shards hold it together; a second run of the same shard and a whole run are refused, naming the
  holder; the folder's lock stays while any shard holds it and goes with the last."""
  from msjax import files
  from msjax.errors import InvalidInputError
  w = str(tmp_path)
  with files.workdir_lock(w, "mode segment", share=(0, 2)):
    with files.workdir_lock(w, "mode segment", share=(1, 2)):
      with pytest.raises(InvalidInputError, match=r"another msjax run .*shard 1/2"):
        with files.workdir_lock(w, "mode segment", share=(1, 2)):
          pass
      with pytest.raises(InvalidInputError, match=r"another msjax run .*shard 0/2.*shard 1/2"):
        with files.workdir_lock(w, "mode segment"):
          pass
      # a shard of another split (its exams overlap these) is refused while these run
      with pytest.raises(InvalidInputError, match=r"shard of another split .*shard 0/2"):
        with files.workdir_lock(w, "mode segment", share=(1, 4)):
          pass
    assert os.path.exists(os.path.join(w, files.LOCK))  # shard 0 still holds the folder
    assert not os.path.exists(os.path.join(w, files.LOCK + ".shard-1-of-2"))
    # through the command: another shard goes on to its own work (here: its input is missing)
    p = _msjax("--config=segment", "--config.shard=1/2", f"--config.input={tmp_path}/nothing",
               f"--workdir={w}")
    assert p.returncode == 2 and "no such file or folder" in p.stderr, p.stderr
    p = _msjax("--config=segment", f"--config.input={tmp_path}/nothing", f"--workdir={w}")
    assert p.returncode == 2 and "another msjax run" in p.stderr and "shard 0/2" in p.stderr
  with pytest.raises(InvalidInputError, match="another msjax run"):  # a whole run holds it
    with files.workdir_lock(w, "mode segment"):
      with files.workdir_lock(w, "mode segment", share=(0, 2)):
        pass
  assert not [n for n in os.listdir(w) if n.startswith(files.LOCK)]
  # a shard that is no K/N of 0 <= K < N is refused before the input is read, nothing written
  for bad in ("2/2", "1", "a/3", "-1/2", "1/2/3"):
    p = _msjax("--config=segment", f"--config.shard={bad}", f"--config.input={tmp_path}",
               f"--workdir={tmp_path}/out")
    assert p.returncode == 2 and f"--config.shard='{bad}': expected K/N" in p.stderr, p.stderr
    assert not os.path.exists(tmp_path / "out")
  # a shard's lock file left by a run that died (no one holds it) stops no one
  (tmp_path / (files.LOCK + ".shard-3-of-4")).write_text("pid 1, mode segment, shard 3/4")
  with files.workdir_lock(w, "mode segment", share=(0, 2)):
    pass


def test_removing_empty_folders_keeps_any_that_another_run_writes_into(tmp_path):
  """files.remove_empty_tree takes the empty folders only (rmdir), so a shard finishing never
  takes the folder another shard is writing its exam into."""
  from msjax import files
  (tmp_path / "work" / "staging" / "sub-a").mkdir(parents=True)
  (tmp_path / "work" / "staging" / "sub-b").mkdir()
  (tmp_path / "work" / "staging" / "sub-b" / "mask.nii.gz").write_bytes(b"being written")
  assert not files.remove_empty_tree(str(tmp_path / "work"))
  assert sorted(os.listdir(tmp_path / "work" / "staging")) == ["sub-b"]
  (tmp_path / "work" / "staging" / "sub-b" / "mask.nii.gz").unlink()
  assert files.remove_empty_tree(str(tmp_path / "work")) and not (tmp_path / "work").exists()


def test_phases_say_each_start_with_what_it_took_the_last_time(caplog):
  import logging
  import time

  from msjax import console
  phases = console.Phases("[segment]")
  with caplog.at_level(logging.INFO):
    with phases("exam1", "network", "8-flip mirroring"):
      time.sleep(0.05)
    with phases("exam2", "network", "8-flip mirroring"):
      pass
  lines = [r.getMessage() for r in caplog.records]
  assert lines[0] == "[segment] exam1: network (8-flip mirroring)"
  assert lines[1].startswith("[segment] exam2: network (8-flip mirroring), ~0 s as on the last")
  assert phases.last["network"] < 0.05
