"""Atomic writes of every output kind (JSON, CSV, text here; NIfTI in msjax.data.nifti, figures in
msjax.figures, all through `atomic`): a temporary file in the same folder, renamed over the final
name when complete and removed when anything fails, so a crash never leaves a half-written file
under the final name, nor a temporary one beside it."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile

from msjax.errors import InvalidInputError


def _suffix(path: str) -> str:
  """The extension a writer may look at (nibabel: .nii.gz, matplotlib: .png)."""
  name = os.path.basename(path)
  for ext in (".nii.gz", ".tar.gz"):
    if name.endswith(ext):
      return ext
  return os.path.splitext(name)[1]


def _read_umask() -> int:
  mask = os.umask(0)  # the only way to read it: set and put back, once, at import
  os.umask(mask)
  return mask


_UMASK = _read_umask()


def writable_folder(folder: str, what: str = "output folder") -> str:
  """Creates `folder` if needed and proves it writable (a file created and removed), or refuses
  it in one line that names it: before any work, not after an hour of it."""
  folder = os.path.abspath(os.path.expanduser(folder))
  try:
    os.makedirs(folder, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".msjax-write-test-", dir=folder)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise InvalidInputError(f"{folder}: the {what} cannot be written ({e.strerror or e}); give a "
                            "folder you can write to") from e
  return folder


LOCK = ".msjax.lock"


@contextlib.contextmanager
def workdir_lock(folder: str, what: str = "", share: tuple[int, int] | None = None):
  """Holds a lock on `folder` for one run: a second msjax run into the same folder is refused in
  one line naming the first (its pid, mode and start), instead of both writing the same outputs.
  `share` = (K, N): a run that writes only its own part of the folder (segment's
  --config.shard=K/N, whose exams and tables no other shard touches) shares the folder with the
  other shards of the same N and holds its part alone: the shards of a SLURM array run side by
  side; a second run of the same shard, a shard of another N (its exams overlap) and a whole run
  are refused. The locks (fcntl, released by the kernel when a run dies) are hidden files,
  removed by the last run holding them."""
  import fcntl
  path = os.path.join(folder, LOCK)
  own = os.path.join(folder, f"{LOCK}.shard-{share[0]}-of-{share[1]}") if share else None
  held = [(_lock(path, fcntl.LOCK_SH if share else fcntl.LOCK_EX, folder), path)]
  try:
    if own:
      held.append((_lock(own, fcntl.LOCK_EX, folder), own))
      other = [t for n, t in _live_shards(folder, skip=own) if not n.endswith(f"-of-{share[1]}")]
      if other:
        raise InvalidInputError(f"{folder}: a shard of another split is writing into this "
                                f"workdir ({other[0]}); its exams overlap this one's: wait for it "
                                "or give another --workdir")
    _say_holder(held[-1][0], what + (f", shard {share[0]}/{share[1]}" if share else ""))
    yield path
  finally:
    for f, name in reversed(held):
      try:  # removed while still held alone: a run waiting on it finds no stale holder's text
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.remove(name)
      except OSError:  # other shards still hold the folder's lock: it stays for them
        pass
      f.close()


def _lock(path: str, kind: int, folder: str):
  """The open file of `path`, locked (`kind`, never waiting); the same file as `path` names now
  (one removed by the run before, between this run's open and its lock, is opened again)."""
  import fcntl
  for _ in range(20):
    f = open(path, "a+")
    try:
      fcntl.flock(f, kind | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = "; ".join(t for _, t in _live_shards(folder)) or f.read().strip() or \
          "another process"
      f.close()
      raise InvalidInputError(f"{folder}: another msjax run is writing into this workdir "
                              f"({holder}); wait for it to end or give another --workdir") from None
    try:
      if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
        return f
    except FileNotFoundError:
      pass
    f.close()
  raise InvalidInputError(f"{folder}: its lock file {LOCK} keeps changing under this run")


def _live_shards(folder: str, skip: str | None = None) -> list[tuple[str, str]]:
  """(lock file, holder's text) of the shards whose runs hold their lock in `folder` now."""
  import fcntl
  out = []
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    if not name.startswith(LOCK + ".shard-") or path == skip:
      continue
    try:
      with open(path, "a+") as f:
        try:
          fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: a dead run's file
        except OSError:
          f.seek(0)
          out.append((name, f.read().strip() or name))
    except OSError:
      continue
  return out


def _say_holder(f, what: str) -> None:
  import datetime
  f.seek(0)
  f.truncate()
  f.write(f"pid {os.getpid()}{', ' + what if what else ''}, since "
          f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}")
  f.flush()


def remove_empty_tree(folder: str) -> bool:
  """Removes the empty folders in and of `folder`, deepest first, with rmdir (which the file system
  refuses for a folder that holds anything): another run writing into a folder of the tree at the
  same moment (segment's shards share a workdir) keeps it. True if `folder` itself went."""
  if not os.path.isdir(folder):
    return False
  for dirpath, _, _ in os.walk(folder, topdown=False):
    try:
      os.rmdir(dirpath)
    except OSError:  # not empty (or gone): left
      pass
  return not os.path.exists(folder)


def make_dirs(folder: str) -> str:
  """os.makedirs that refuses an unwritable place with one clear line instead of a traceback."""
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise InvalidInputError(f"{folder}: cannot create this folder ({e.strerror or e})") from e
  return folder


@contextlib.contextmanager
def atomic(path: str):
  """Yields a temporary path beside `path`; on success it replaces `path`, on failure it is gone.
  The file gets the permissions any new file of the user gets (0666 less the umask), not the
  temporary file's 0600, so that colleagues sharing a lab folder can read the results."""
  folder = make_dirs(os.path.dirname(os.path.abspath(path)))
  try:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=_suffix(path), dir=folder)
  except OSError as e:
    raise InvalidInputError(f"{folder}: cannot write {os.path.basename(path)} here "
                            f"({e.strerror or e})") from e
  os.close(fd)
  try:
    yield tmp
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


@contextlib.contextmanager
def atomic_folder(path: str):
  """Yields a temporary folder beside `path`; on success it takes `path`'s place (a folder
  there before is replaced whole, files it alone had included), on failure it is gone and
  `path` is as it was. The swap is two renames: for an instant between them `path` is absent,
  never half-written."""
  parent = make_dirs(os.path.dirname(os.path.abspath(path)))
  name = os.path.basename(os.path.abspath(path))
  try:
    tmp = tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=parent)
  except OSError as e:
    raise InvalidInputError(f"{parent}: cannot write {name} here ({e.strerror or e})") from e
  try:
    yield tmp
    os.chmod(tmp, 0o777 & ~_UMASK)
    old = None
    if os.path.exists(path):
      old = tempfile.mkdtemp(prefix=f".old-{name}-", dir=parent)
      os.replace(path, os.path.join(old, name))
    os.replace(tmp, path)
    if old:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def write_text(text: str, path: str) -> str:
  with atomic(path) as tmp:
    with open(tmp, "w", newline="") as f:
      f.write(text)
  return path


def write_json(obj, path: str) -> str:
  """NaN and infinity are refused (they are not JSON): an undefined value is written as None."""
  return write_text(json.dumps(obj, indent=1, allow_nan=False), path)


def write_csv(rows: list[dict], path: str, fieldnames=None) -> str:
  """None is written as an empty cell."""
  fieldnames = fieldnames or list(dict.fromkeys(k for r in rows for k in r)) or ["empty"]
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=fieldnames)
  writer.writeheader()
  writer.writerows(rows)
  return write_text(buf.getvalue(), path)
