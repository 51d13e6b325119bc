"""DICOM out: the lesion mask as a DICOM Segmentation object (highdicom) referencing the source FLAIR
series, so that a viewer (OHIF, 3D Slicer, a PACS) loads it over the original images.

The frames are computed by geometry, not by assuming a voxel order: every pixel of every source
DICOM slice (ImagePositionPatient, ImageOrientationPatient, PixelSpacing) is mapped to world
coordinates and looked up in the mask's NIfTI grid (nearest voxel). dcm2niix may have flipped or
reordered the slices on the way in; an oblique acquisition stays oblique; the segmentation lands
on the pixels it was computed on whatever the orientation.
"""
from __future__ import annotations

import numpy as np

from msjax import files

_LPS = np.array([-1.0, -1.0, 1.0])


def frames_on_source(mask: np.ndarray, affine: np.ndarray, sources) -> np.ndarray:
  """(n_slices, rows, cols) uint8: the mask (file voxel order, RAS `affine`) at every pixel of
  each source slice; 0 outside the mask's grid."""
  inverse = np.linalg.inv(np.asarray(affine, float))
  out = []
  for ds in sources:
    rows, cols = int(ds.Rows), int(ds.Columns)
    ipp = np.asarray(ds.ImagePositionPatient, float)
    iop = np.asarray(ds.ImageOrientationPatient, float)
    row_mm, col_mm = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
    r, c = np.mgrid[0:rows, 0:cols]
    # DICOM: iop[:3] is the direction of increasing column index, iop[3:] of increasing row index
    lps = ipp + (c[..., None] * col_mm) * iop[:3] + (r[..., None] * row_mm) * iop[3:]
    ijk = np.rint((lps * _LPS) @ inverse[:3, :3].T + inverse[:3, 3]).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < np.array(mask.shape)), axis=-1)
    frame = np.zeros((rows, cols), np.uint8)
    frame[inside] = mask[tuple(ijk[inside].T)]
    out.append(frame)
  return np.stack(out)


def read_sources(paths: list[str]):
  """The source series' datasets, in slice order along their normal."""
  import pydicom
  sources = [pydicom.dcmread(p) for p in paths]
  normal = np.cross(*np.asarray(sources[0].ImageOrientationPatient, float).reshape(2, 3))
  return sorted(sources, key=lambda ds: float(np.dot(normal, np.asarray(
      ds.ImagePositionPatient, float))))


def write_seg(mask: np.ndarray, affine: np.ndarray, source_paths: list[str], path: str, *,
              model: str = "msjax") -> str:
  """Writes the DICOM SEG (binary, one segment: MS lesion) of `mask` over the source series."""
  import highdicom as hd
  from pydicom.sr.codedict import codes

  import msjax
  sources = read_sources(source_paths)
  frames = frames_on_source(np.asarray(mask) > 0, affine, sources)
  description = hd.seg.SegmentDescription(
      segment_number=1, segment_label="MS lesion",
      segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
      segmented_property_type=codes.SCT.Lesion,
      algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
      algorithm_identification=hd.AlgorithmIdentificationSequence(
          name="msjax", version=msjax.__version__, family=codes.cid7162.ArtificialIntelligence,
          source=model[-64:]))
  seg = hd.seg.Segmentation(
      source_images=sources, pixel_array=frames.astype(bool),
      segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
      segment_descriptions=[description], series_instance_uid=hd.UID(), series_number=9001,
      sop_instance_uid=hd.UID(), instance_number=1, manufacturer="msjax",
      manufacturer_model_name="msjax MS lesion segmentation", software_versions=msjax.__version__,
      device_serial_number="none", series_description="MS lesions (msjax)",
      omit_empty_frames=False)
  with files.atomic(path) as tmp:
    seg.save_as(tmp)
  return path


def read_seg_frames(path: str, source_paths: list[str]) -> np.ndarray:
  """The SEG's lesion frames in the source slices' order (for checks: what a viewer shows)."""
  import highdicom as hd
  seg = hd.seg.segread(path)
  sources = read_sources(source_paths)
  uids = [str(ds.SOPInstanceUID) for ds in sources]
  pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
  return np.asarray(pixels)[..., 0].astype(np.uint8)
