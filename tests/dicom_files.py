"""DICOM series for the tests: a volume on any (oblique) grid written as MR Image Storage slices,
one file per slice, geometry from its NIfTI affine (what a scanner export looks like)."""
import os

import numpy as np

_LPS = np.array([-1.0, -1.0, 1.0])


def write_series(volume: np.ndarray, affine: np.ndarray, folder, *, description: str,
                 patient_id: str = "PAT01", study_uid: str = "", study_date: str = "20240101",
                 series_number: int = 1, **fields) -> list[str]:
  """volume (i, j, k) with RAS `affine`; slices along k; uint16 pixels (volume is rounded)."""
  from pydicom.dataset import FileDataset, FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian, generate_uid
  os.makedirs(folder, exist_ok=True)
  study_uid = study_uid or generate_uid(entropy_srcs=[patient_id, study_date])
  series_uid = generate_uid()
  a = np.asarray(affine, float)
  spacing = np.sqrt((a[:3, :3] ** 2).sum(0))
  col_dir = a[:3, 0] / spacing[0] * _LPS   # increasing column index = voxel axis i
  row_dir = a[:3, 1] / spacing[1] * _LPS   # increasing row index = voxel axis j
  paths = []
  for k in range(volume.shape[2]):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = os.path.join(str(folder), f"IM{series_number:03d}_{k:04d}.dcm")
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientID, ds.PatientName = patient_id, f"{patient_id}^Test"
    ds.PatientBirthDate, ds.PatientSex = "19800101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "frame"])
    ds.StudyDate, ds.StudyTime, ds.SeriesDate, ds.SeriesTime = study_date, "120000", study_date, \
        f"12{series_number:02d}00"
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "A1", "1", ""
    ds.Manufacturer = "test"
    ds.SeriesNumber, ds.InstanceNumber = series_number, k + 1
    ds.SeriesDescription = description
    for key, value in fields.items():
      setattr(ds, key, value)
    ds.ImagePositionPatient = [float(v) for v in (a[:3, :3] @ [0, 0, k] + a[:3, 3]) * _LPS]
    ds.ImageOrientationPatient = [float(v) for v in np.r_[col_dir, row_dir]]
    ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
    ds.SliceThickness = float(spacing[2])
    ds.SpacingBetweenSlices = float(spacing[2])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(
        np.clip(np.rint(volume[:, :, k].T), 0, 65535).astype(np.uint16)).tobytes()
    ds.save_as(path, enforce_file_format=True)
    paths.append(path)
  return paths
