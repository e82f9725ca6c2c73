"""Writing predicted organ masks as DICOM files a viewer overlays on the source CT.

Layout, as IRCAD's masks: `out_dir/MASKS_DICOM/<organ>/image_N`, one file per organ and CT
slice, pixels 0 (outside) or 255 (inside), in the CT slice's pixel grid.

Each organ is one series of CT Image Storage objects with 8-bit unsigned pixels, like
IRCAD's own mask files (a DICOM SEG object would be the formal choice, but IRCAD-style
files load in 3D Slicer as a volume aligned with the CT, to be shown as a label map).
Every file carries its source slice's geometry (position, orientation, pixel spacing,
thickness, frame of reference), study and patient, so viewers place it over the CT and
file it under the same study.

UIDs are derived from the source series: a new SeriesInstanceUID per organ, and a
SOPInstanceUID per organ and slice. They are the same on every run on the same CT, so a
rerun replaces the earlier masks in a viewer's database instead of adding duplicates.
When the source has no FrameOfReferenceUID (IRCAD's files have none), one is derived from
the source series too and shared by all organs. Files are Part 10 (preamble, file meta,
Explicit VR Little Endian).
"""

import copy
import pathlib
import re
import types
from typing import Mapping

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from fcn_jax.ct_series import CtSeries
from fcn_jax.datasets.ircad.archive import MASKS_FOLDER

ORGANS: Mapping[int, str] = types.MappingProxyType({1: 'liver', 2: 'bone', 3: 'kidney'})

_UID_ROOT = 'fcn-jax/masks'
_FOLDER_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')

# Copied from the source slice when present: patient, study, and where the slice lies.
_COPIED = (
    'SpecificCharacterSet',
    'PatientName', 'PatientID', 'PatientBirthDate', 'PatientSex',
    'StudyInstanceUID', 'StudyDate', 'StudyTime', 'StudyID', 'AccessionNumber',
    'ReferringPhysicianName', 'StudyDescription',
    'PatientPosition', 'FrameOfReferenceUID', 'PositionReferenceIndicator',
    'ImagePositionPatient', 'ImageOrientationPatient', 'SliceLocation',
    'PixelSpacing', 'SliceThickness', 'SpacingBetweenSlices',
)
# Type 2 attributes of the CT image object: present, empty when the source lacks them.
_REQUIRED_EMPTY = (
    'PatientName', 'PatientID', 'PatientBirthDate', 'PatientSex', 'StudyDate', 'StudyTime',
    'StudyID', 'AccessionNumber', 'ReferringPhysicianName', 'PositionReferenceIndicator',
    'SliceThickness', 'KVP', 'AcquisitionNumber',
)


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[_UID_ROOT, *(str(p) for p in parts)])


def _series_key(series: CtSeries) -> str:
    """What the output UIDs are derived from: the source SeriesInstanceUID, else its file names."""
    uid = str(series.headers[0].get('SeriesInstanceUID', '') or '')
    return uid or '|'.join([series.source, *series.names])


def _slice_dataset(source: Dataset, pixels: np.ndarray, *, organ: str, class_id: int,
                   series_uid: str, sop_uid: str, study_uid: str, frame_uid: str,
                   instance: int) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b'\x00' * 128
    for keyword in _COPIED:
        if keyword in source:
            ds.add(copy.deepcopy(source.data_element(keyword)))
    for keyword in _REQUIRED_EMPTY:
        if keyword not in ds:
            setattr(ds, keyword, '')
    ds.ImageType = ['DERIVED', 'SECONDARY', 'AXIAL']
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = 'CT'
    ds.Manufacturer = 'fcn-jax'
    ds.SeriesDescription = f'fcn-jax {organ}'
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1000 + class_id
    ds.InstanceNumber = instance
    ds.FrameOfReferenceUID = frame_uid
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = 'MONOCHROME2'
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope = '0', '1'
    ds.WindowCenter, ds.WindowWidth = '128', '256'
    data = pixels.astype(np.uint8).tobytes()
    if len(data) % 2:
        data += b'\x00'
    ds.add_new(0x7FE00010, 'OB', data)
    return ds


def write_masks(out_dir: pathlib.Path, series: CtSeries, classes: np.ndarray,
                organs: Mapping[int, str] = ORGANS) -> list[pathlib.Path]:
    """Writes `out_dir/MASKS_DICOM/<organ>/image_N` for every organ and slice of `series`.

    `classes` holds class ids (uint8 [Z, H, W]) in the pixel grid of `series.hu`; `organs`
    maps the class ids to write to their folder names. Returns the files written, organ by
    organ in z order. The caller makes the output appear at once (write to a temporary
    folder, then rename it).
    """
    classes = np.asarray(classes)
    if classes.shape != series.hu.shape:
        raise ValueError(f'classes have shape {classes.shape}, the CT series {series.hu.shape}')
    if not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f'classes must hold integer class ids, got {classes.dtype}')
    for class_id, organ in organs.items():
        if not _FOLDER_NAME.match(organ):
            raise ValueError(f'organ name {organ!r} (class {class_id}) is not a plain folder name')
    if len(set(organs.values())) != len(organs):
        raise ValueError(f'organ names must differ: {dict(organs)}')

    key = _series_key(series)
    first = series.headers[0]
    study_uid = str(first.get('StudyInstanceUID', '') or '') or _uid(key, 'study')
    frame_uid = str(first.get('FrameOfReferenceUID', '') or '') or _uid(key, 'frame')
    written = []
    for class_id, organ in organs.items():
        folder = pathlib.Path(out_dir) / MASKS_FOLDER / organ
        folder.mkdir(parents=True, exist_ok=True)
        series_uid = _uid(key, 'series', organ)
        for k, (source, number) in enumerate(zip(series.headers, series.slice_numbers)):
            instance = source.get('InstanceNumber')
            ds = _slice_dataset(
                source, np.where(classes[k] == class_id, 255, 0).astype(np.uint8),
                organ=organ, class_id=class_id, series_uid=series_uid,
                sop_uid=_uid(key, 'instance', organ, k, source.get('SOPInstanceUID', '')),
                study_uid=study_uid, frame_uid=frame_uid,
                instance=int(instance) if instance not in (None, '') else k + 1)
            path = folder / f'image_{number}'
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            written.append(path)
    return written
