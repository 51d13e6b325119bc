"""NIfTI in and out: read, validate, reorient to RAS, resample, and write back atomically.

Every array msjax computes on is in canonical RAS voxel order. The `Grid` of the file it came from
is kept so that a prediction can be put back on the exam's own voxel grid and affine.
"""
from __future__ import annotations

import dataclasses
import os

import nibabel as nib
import numpy as np
from absl import logging
from nibabel import orientations as ornt_lib

from msjax import files
from msjax.errors import InvalidInputError

CANONICAL = ("R", "A", "S")


@dataclasses.dataclass(frozen=True)
class Grid:
  """Where a canonical (RAS) array sits in the world, and how it maps back to its source file."""
  affine: np.ndarray          # canonical voxel -> world (mm)
  shape: tuple[int, int, int]  # canonical shape
  source_affine: np.ndarray   # the file's own affine
  source_shape: tuple[int, int, int]
  source_axcodes: tuple[str, str, str]

  @property
  def spacing(self) -> tuple[float, float, float]:
    return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

  @property
  def voxel_ml(self) -> float:
    return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

  def same_as(self, other: "Grid", atol: float = 1e-3) -> bool:
    return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol)


@dataclasses.dataclass(frozen=True)
class Volume:
  data: np.ndarray  # float32 (images) or uint8 (masks), canonical RAS
  grid: Grid
  path: str


def _raw_zooms(path: str, img):
  """Voxel sizes as stored: nibabel's loader silently replaces a zero pixdim with 1."""
  try:
    with nib.openers.ImageOpener(path) as f:
      raw = type(img.header).from_fileobj(f, check=False)
    return tuple(float(z) for z in raw["pixdim"][1:4])
  except Exception:  # unusual header class: fall back to what nibabel reports
    return tuple(float(z) for z in img.header.get_zooms()[:3])


def itk_problem(path: str) -> str | None:
  """Why ITK (preprocessing, longitudinal) cannot read a file nibabel reads, or None: NIfTI-2
  (SimpleITK 2.5 finds no reader for it). Exams given on the model grid never reach ITK."""
  path = split_label(os.fspath(path))[0]
  heads = header_bytes(path, 4)
  if heads and 540 in (int.from_bytes(heads[1], "little"), int.from_bytes(heads[1], "big")):
    return (f"{path}: a NIfTI-2 file, which the preprocessing's ITK cannot read: save it as "
            "NIfTI-1, e.g. with nibabel nib.save(nib.Nifti1Image(img.dataobj, img.affine), "
            "'FLAIR.nii.gz')")
  return None


def header_bytes(path: str, n: int = 348) -> tuple[bytes, bytes] | None:
  """(the file's first n bytes, the first n of its content: gunzipped where the bytes are gzip),
  or None when it cannot be read that far (read_nifti then names the problem)."""
  import gzip
  try:
    with open(path, "rb") as f:
      raw = f.read(n)
    if raw[:2] != b"\x1f\x8b":
      return raw, raw
    with gzip.open(path, "rb") as f:
      return raw, f.read(n)
  except Exception:  # noqa: BLE001 - unreadable, truncated or corrupt gzip
    return None


def _check_header(img, path: str) -> None:
  shape = tuple(img.shape)
  if len(shape) < 3 or (len(shape) > 3 and any(d != 1 for d in shape[3:])):
    kind = " (4D series or multi-channel image)" if len(shape) > 3 else ""
    raise InvalidInputError(f"{path}: expected a 3D volume, got {len(shape)}D shape {shape}{kind}")
  dtype = img.get_data_dtype()
  if dtype.fields is not None or dtype.kind == "c":
    raise InvalidInputError(f"{path}: unsupported data type {dtype} (complex or RGB); "
                            "msjax needs one real-valued 3D volume per file")
  affine = img.affine
  if affine is None or not np.all(np.isfinite(affine)):
    raise InvalidInputError(f"{path}: affine is missing or not finite:\n{affine}")
  zooms = _raw_zooms(path, img)
  if len(zooms) < 3 or any(not np.isfinite(z) or z <= 0 for z in zooms):
    raise InvalidInputError(f"{path}: voxel size {tuple(float(z) for z in zooms)} has a zero, "
                            "negative or non-finite entry")
  if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
    raise InvalidInputError(f"{path}: affine is singular (determinant 0):\n{affine}")
  skew = shear_degrees(affine)
  if skew > MAX_SHEAR_DEGREES:
    raise InvalidInputError(
        f"{path}: its affine shears the voxel grid (axes {skew:.2f} degrees from perpendicular): "
        "ITK, which preprocessing reads images with, cannot hold that geometry and reads the "
        "file in another place than its affine says; resample it onto a grid with perpendicular "
        "axes first")


# a NIfTI affine's voxel axes may lean from perpendicular by this much before the file is refused
# (rounding in converters leaves ~1e-4 degrees; 0.06 degrees moves a point 100 mm away 0.1 mm)
MAX_SHEAR_DEGREES = 0.06


def shear_degrees(affine) -> float:
  """How far (degrees) the voxel axes of an affine lean from perpendicular, at the worst pair."""
  axes = np.asarray(affine, float)[:3, :3]
  axes = axes / np.linalg.norm(axes, axis=0)
  cos = np.abs(axes.T @ axes - np.eye(3)).max()
  return float(np.degrees(np.arcsin(min(cos, 1.0))))


def _stored_bytes(path: str) -> int | None:
  """How many bytes the file holds once decompressed: its size, or for gzip the ISIZE field of
  its trailer (the uncompressed size modulo 2**32; None when several gzip members make it
  unknowable without reading everything)."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    if f.read(2) != b"\x1f\x8b":
      return size
    f.seek(max(size - 4, 0))
    return int.from_bytes(f.read(4), "little")


def _is_gzip(path: str) -> bool:
  with open(path, "rb") as f:
    return f.read(2) == b"\x1f\x8b"


def _decompressed_bytes(path: str, enough: int) -> int:
  """Bytes a gzip file (of one member or several) decompresses to, counted up to `enough`; a
  truncated file counts what it holds."""
  import gzip
  import zlib
  total = 0
  try:
    with gzip.open(path, "rb") as f:
      while total < enough:
        block = f.read(1 << 22)
        if not block:
          break
        total += len(block)
  except (EOFError, OSError, zlib.error):
    pass
  return total


# No brain MRI volume comes near this (1024³ float32): a header claiming more is refused before
# anything is allocated, whatever the file holds.
MAX_VOLUME_BYTES = 4 * 1024 ** 3


def _check_size(img, path: str) -> None:
  """The voxels the header claims must fit in the file, checked before they are read, so that a
  damaged header claiming gigabytes over a small file is refused, not allocated."""
  header = img.header
  claimed = int(np.prod(img.shape, dtype=np.int64)) * header.get_data_dtype().itemsize
  if claimed > MAX_VOLUME_BYTES:
    raise InvalidInputError(f"{path}: the header claims {claimed / 1024 ** 3:.1f} GiB of voxels "
                            f"({'x'.join(map(str, img.shape))} {header.get_data_dtype()}): not a "
                            "brain MRI volume (a damaged header?)")
  offset = int(header.get("vox_offset", 0)) if hasattr(header, "get") else 0
  stored = _stored_bytes(path)
  if stored is not None and claimed < 2 ** 32 and stored < offset + claimed and \
      _is_gzip(path):
    # the trailer gives the last gzip member's size only: a file written in several members
    # (valid, and read by nibabel) is measured by decompressing it, up to what is needed
    stored = _decompressed_bytes(path, offset + claimed)
  if stored is not None and claimed < 2 ** 32 and stored < offset + claimed:
    raise InvalidInputError(f"{path}: the header claims {claimed:,} bytes of voxels "
                            f"({'x'.join(map(str, img.shape))} {header.get_data_dtype()}) but the "
                            f"file holds {max(stored - offset, 0):,}: truncated, or a damaged "
                            "header")


def squeeze_to_3d(data: np.ndarray, path: str) -> np.ndarray:
  if data.ndim > 3:
    extra = data.shape[3:]
    if any(d != 1 for d in extra):
      raise InvalidInputError(f"{path}: expected a 3D volume, got shape {data.shape} "
                              "(4D series or multi-channel image)")
    data = data.reshape(data.shape[:3])
  if data.ndim != 3:
    raise InvalidInputError(f"{path}: expected a 3D volume, got {data.ndim}D shape {data.shape}")
  return data


def no_data_to_zero(data: np.ndarray, path: str, allowed: bool = True) -> np.ndarray:
  """An image whose non-finite voxels are all NaN and all in the background around the head
  (every connected NaN region touches the volume's faces: SPM and other tools write NaN where a
  resliced image has no data) with those voxels at 0, as a scan stores no signal; said in the
  log. Infinite voxels, NaN inside the image (a region that does not reach the faces: corrupt
  data) or NaN in a mask (allowed=False) are refused, naming the file."""
  from scipy import ndimage
  bad = ~np.isfinite(data)
  n_bad = int(bad.sum())
  where = "voxels are NaN or infinite"
  if allowed and not np.isinf(data).any():
    labels, n = ndimage.label(bad)
    faces = np.zeros(n + 1, bool)
    for axis in range(3):
      for end in (0, -1):
        faces[np.take(labels, end, axis=axis)] = True
    if faces[1:].all():
      logging.warning("%s: %d voxels are NaN, all in the background around the head (no data "
                      "there): read as 0", path, n_bad)
      return np.where(bad, np.float32(0), data)
    inside = np.flatnonzero(~faces[1:]) + 1  # the NaN regions that do not reach a face
    where = (f"voxels are NaN, {int(np.isin(labels, inside).sum())} of them "
             "inside the image (regions that do not reach its faces: corrupt data, not background)")
  raise InvalidInputError(f"{path}: {n_bad} {where}")


LABEL_SEP = "::"  # "<file>::<value>": the voxels of one value of a label map, as a mask


def split_label(path: str) -> tuple[str, int | None]:
  """'seg_dseg.nii.gz::2' -> ('seg_dseg.nii.gz', 2); a plain path -> (path, None)."""
  file, sep, value = str(path).rpartition(LABEL_SEP)
  if sep and value.strip().lstrip("-").isdigit():
    return file, int(value)
  return str(path), None


# what a file holds when it is a stand-in for the image (a version-control pointer, a web page)
_STAND_INS = (
    (lambda head: head.startswith(b"version https://git-lfs.github.com/spec"),
     "; it is a Git LFS pointer, not the image: run `git lfs pull` in its repository"),
    (lambda head: b"/annex/objects/" in head and b"\n" not in head.rstrip(b"\n"),
     "; it is a git-annex pointer, not the image: `datalad get` it (or `git annex get`)"),
    (lambda head: head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")),
     "; it is a web page, not an image: the download saved a login or error page"),
)


def _misnamed(path: str) -> str:
  """A hint when a file is a stand-in for the image (_STAND_INS), or its name says one
  compression and its bytes another (a .nii.gz stored plain, a .nii gzip-compressed: a download
  or copy that (un)compressed it), else ''."""
  heads = header_bytes(path)
  if heads is None:  # unreadable, truncated or corrupt: no hint to give
    return ""
  raw, head = heads
  stand_in = next((hint for test, hint in _STAND_INS if test(raw)), "")
  if stand_in:
    return stand_in
  if not (len(head) == 348 and head[344:347] in (b"n+1", b"ni1")):
    return ""
  gzipped, named_gz = raw[:2] == b"\x1f\x8b", path.lower().endswith(".gz")
  if gzipped and not named_gz:
    return "; its bytes are a gzip-compressed NIfTI: name it .nii.gz"
  if named_gz and not gzipped:
    return "; its bytes are an uncompressed NIfTI: name it .nii (or gzip it)"
  return ""


def require_file(path: str) -> None:
  """Refuses a path that does not exist, saying why: a link whose target is absent says so, and
  a git-annex link (a DataLad dataset whose content was never fetched) says how to fetch it."""
  if os.path.exists(path):
    return
  if not os.path.islink(path):
    raise InvalidInputError(f"{path}: file does not exist")
  target = os.readlink(path)
  if "annex/objects/" in target:
    raise InvalidInputError(f"{path}: a git-annex link whose content is not here (a DataLad or "
                            "git-annex dataset not fetched): `datalad get` it (or `git annex get`)")
  raise InvalidInputError(f"{path}: a symbolic link to {target}, which does not exist")


def read_nifti(path: str | os.PathLike, *, kind: str = "image") -> Volume:
  """Reads and validates one NIfTI file and returns it in canonical RAS order.

  kind: "image" (float32; must be finite and not constant) or "mask" (values in {0, 1}; uint8).
  A mask may be one value of a label map (a BIDS `_dseg`): `<file>::<value>`.
  """
  path, label = split_label(os.fspath(path))
  if label is not None and kind != "mask":
    raise InvalidInputError(f"{path}: a label value ({LABEL_SEP}{label}) selects a mask, not an "
                            "image")
  require_file(path)
  try:
    img = nib.load(path)
  except Exception as e:  # nibabel raises several types for corrupt headers
    raise InvalidInputError(f"{path}: cannot be read as NIfTI ({type(e).__name__}: {e})"
                            + _misnamed(path)) from e
  _check_header(img, path)
  _check_size(img, path)
  try:
    raw = np.asanyarray(img.dataobj)
  except Exception as e:  # truncated gzip streams raise EOFError, zlib.error, OSError, ValueError
    raise InvalidInputError(f"{path}: voxel data cannot be read, the file is truncated or "
                            f"corrupt ({type(e).__name__}: {e})") from e
  if raw.dtype.kind == "c" or raw.dtype.fields is not None:
    raise InvalidInputError(f"{path}: unsupported data type {raw.dtype} (complex or RGB)")
  raw = squeeze_to_3d(raw, path)
  data = raw.astype(np.float32, copy=False)
  if not np.all(np.isfinite(data)):
    data = no_data_to_zero(data, path, allowed=kind == "image")
  if kind == "mask" and label is not None:  # no voxel of the value: an empty mask (no lesion)
    data = (data == label).astype(np.uint8)
  elif kind == "mask":
    if not np.all((data == 0) | (data == 1)):
      values = np.unique(data)
      shown = ", ".join(f"{v:g}" for v in values[:8]) + (" ..." if len(values) > 8 else "")
      raise InvalidInputError(f"{path}: a mask must hold only 0 and 1, found values {shown}")
    data = data.astype(np.uint8)
  elif kind == "image":
    if data.min() == data.max():
      raise InvalidInputError(f"{path}: image is constant (every voxel is {float(data.min()):g})"
                              + (", i.e. empty" if data.min() == 0 else ""))
  else:
    raise ValueError(f"unknown kind {kind!r}")

  source_ornt = ornt_lib.io_orientation(img.affine)
  to_ras = ornt_lib.ornt_transform(source_ornt, ornt_lib.axcodes2ornt(CANONICAL))
  data = np.ascontiguousarray(ornt_lib.apply_orientation(data, to_ras))
  affine = img.affine @ ornt_lib.inv_ornt_aff(to_ras, raw.shape)
  grid = Grid(affine=affine, shape=tuple(int(s) for s in data.shape),
              source_affine=np.asarray(img.affine, dtype=np.float64),
              source_shape=tuple(int(s) for s in raw.shape),
              source_axcodes=tuple(ornt_lib.aff2axcodes(img.affine)))
  return Volume(data=data, grid=grid, path=path)


# What a brain exam's geometry can be. Voxels: from 0.1 mm (high-resolution research scans) to
# 12 mm (the thickest clinical 2D slices). Field of view per axis: at least 60 mm (a slab of
# 2D slices over the lesions' part of the brain) and at most 500 mm (a whole-body coil's).
VOXEL_MM = (0.1, 12.0)
FIELD_OF_VIEW_MM = (60.0, 500.0)


def geometry_problem(grid: Grid) -> str | None:
  """Why this grid cannot be a brain exam, or None."""
  spacing = np.sqrt((grid.source_affine[:3, :3] ** 2).sum(axis=0))
  fov = spacing * np.array(grid.source_shape)
  fmt = lambda v: " x ".join(f"{x:.3g}" for x in v)  # noqa: E731
  if (spacing < VOXEL_MM[0]).any() or (spacing > VOXEL_MM[1]).any():
    return (f"voxel size {fmt(spacing)} mm is outside {VOXEL_MM[0]:g}-{VOXEL_MM[1]:g} mm: this "
            "cannot be a brain MRI (a wrong header?)")
  if (fov < FIELD_OF_VIEW_MM[0]).any() or (fov > FIELD_OF_VIEW_MM[1]).any():
    return (f"field of view {fmt(fov)} mm ({'x'.join(map(str, grid.source_shape))} voxels of "
            f"{fmt(spacing)} mm) is outside {FIELD_OF_VIEW_MM[0]:g}-{FIELD_OF_VIEW_MM[1]:g} mm "
            "per axis: this cannot be a brain exam")
  return None


def to_source_orientation(data: np.ndarray, grid: Grid) -> np.ndarray:
  """Inverse of the reorientation done by `read_nifti`: canonical array -> the file's voxel order."""
  to_source = ornt_lib.ornt_transform(ornt_lib.axcodes2ornt(CANONICAL),
                                      ornt_lib.axcodes2ornt(grid.source_axcodes))
  out = ornt_lib.apply_orientation(data, to_source)
  assert out.shape[:3] == grid.source_shape, (out.shape, grid.source_shape)
  return np.ascontiguousarray(out)


def to_canonical(data: np.ndarray, grid: Grid) -> np.ndarray:
  """An array in the file's voxel order -> canonical (RAS) order, as `read_nifti` reorients."""
  to_ras = ornt_lib.ornt_transform(ornt_lib.axcodes2ornt(grid.source_axcodes),
                                   ornt_lib.axcodes2ornt(CANONICAL))
  return np.ascontiguousarray(ornt_lib.apply_orientation(data, to_ras))


def write_nifti(data: np.ndarray, affine: np.ndarray, path: str | os.PathLike,
                dtype=np.float32) -> str:
  """Writes atomically: a temporary file in the same folder, then rename, so a crash never leaves a
  half-written file under the final name."""
  path = os.fspath(path)
  img = nib.Nifti1Image(np.asarray(data, dtype=dtype), np.asarray(affine, dtype=np.float64))
  img.set_qform(img.affine, code=1)
  img.set_sform(img.affine, code=1)
  with files.atomic(path) as tmp:
    nib.save(img, tmp)
  return path


def write_in_source_space(data: np.ndarray, grid: Grid, path: str, dtype=np.float32) -> str:
  """Writes a canonical-order array on `grid` back in the exam's own voxel order and affine."""
  return write_nifti(to_source_orientation(data, grid), grid.source_affine, path, dtype=dtype)


# ---- resampling between an exam's grid and the model grid (e.g. the paper's 128³) -------------

def _box_coordinates(src_shape, dst_shape, offset=None):
  """Source voxel coordinates of the destination voxel centres when both grids span the same box
  (voxel i of the destination covers [i, i+1) * src/dst in source voxel units). offset: the
  destination grid moved by that many of its own voxels along each axis (a sub-voxel phase)."""
  axes = []
  for axis, (s, d) in enumerate(zip(src_shape, dst_shape)):
    scale = s / d
    shift = 0.0 if offset is None else float(offset[axis])
    axes.append((np.arange(d, dtype=np.float32) + 0.5 + shift) * scale - 0.5)
  return axes


def resample_box(data: np.ndarray, shape, *, order: int = 1, offset=None) -> np.ndarray:
  """Resamples a 3D array onto `shape` voxels spanning the same field of view.

  order=1: trilinear (images, probabilities); order=0: nearest. Separable, so it is one 1D
  interpolation per axis: fast even at 182×218×182. offset: the new grid moved by that many of
  its own voxels per axis (resampled_grid's offset); `back_offset` undoes it.
  """
  shape = tuple(int(s) for s in shape)
  if tuple(data.shape) == shape and (offset is None or not np.any(offset)):
    return data
  out = data.astype(np.float32, copy=False)
  for axis, coords in enumerate(_box_coordinates(data.shape, shape, offset)):
    n = out.shape[axis]
    if order == 0:
      idx = np.clip(np.round(coords).astype(np.int64), 0, n - 1)
      out = np.take(out, idx, axis=axis)
    else:
      c = np.clip(coords, 0, n - 1)
      lo = np.floor(c).astype(np.int64)
      hi = np.minimum(lo + 1, n - 1)
      w = (c - lo).astype(np.float32)
      bshape = [1] * out.ndim
      bshape[axis] = -1
      w = w.reshape(bshape)
      out = np.take(out, lo, axis=axis) * (1 - w) + np.take(out, hi, axis=axis) * w
  return np.ascontiguousarray(out)


def back_offset(offset, shape, native_shape) -> tuple:
  """The offset that brings a volume made by resample_box(x, shape, offset=offset) back onto
  x's grid: resample_box(volume, native_shape, offset=back_offset(offset, shape, native_shape))
  samples it at x's voxel centres."""
  return tuple(-float(o) * n / s for o, s, n in zip(offset, shape, native_shape))


def half_voxel_phases() -> list[tuple]:
  """The 8 sub-voxel phases of a resampled grid, in its voxels: every combination of 0 or half a
  voxel along each axis, phase k moved along axis a when bit a of k is set (the order of
  models/model.MIRRORS: test-time phase k is predicted in flip k)."""
  return [tuple(0.5 * float(bool(k & bit)) for bit in (1, 2, 4)) for k in range(8)]


def resample_mask(mask: np.ndarray, shape, offset=None) -> np.ndarray:
  """Masks are interpolated linearly and thresholded at 0.5: smoother than nearest, and it keeps a
  blob's volume close to the original in both directions."""
  return (resample_box(mask.astype(np.float32), shape, order=1, offset=offset) >= 0.5
          ).astype(np.uint8)


def resampled_grid(grid: Grid, shape, offset=None) -> Grid:
  """The grid of `resample_box(data_on_grid, shape, offset=offset)`: same field of view, new voxel
  size (moved by `offset` of its voxels)."""
  scale = np.array(grid.shape, dtype=np.float64) / np.array(shape, dtype=np.float64)
  shift = np.zeros(3) if offset is None else np.asarray(offset, np.float64)
  # new voxel i sits at old voxel (i + 0.5 + offset) * scale - 0.5
  step = np.diag(list(scale) + [1.0])
  step[:3, 3] = (0.5 + shift) * scale - 0.5
  return dataclasses.replace(grid, affine=grid.affine @ step, shape=tuple(int(s) for s in shape))
