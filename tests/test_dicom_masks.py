"""Predicted masks written as IRCAD-style DICOM: layout, pixels, geometry and UIDs."""

import pathlib
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from fcn_jax.ct_series import read_series
from fcn_jax.datasets.ircad import phantom
from fcn_jax.dicom_masks import write_masks

SLICES, SIZE = 3, 32
ORGANS = {1: 'liver', 2: 'bone', 3: 'kidney'}
GEOMETRY = ('ImagePositionPatient', 'ImageOrientationPatient', 'PixelSpacing', 'SliceThickness',
            'SpacingBetweenSlices', 'FrameOfReferenceUID', 'StudyInstanceUID', 'PatientName',
            'PatientID')


@pytest.fixture(scope='module')
def patient(tmp_path_factory) -> pathlib.Path:
    return phantom.write_patient(tmp_path_factory.mktemp('patient'), 1, num_slices=SLICES,
                                 size=SIZE, inner_zips=False)


def _classes(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, shape).astype(np.uint8)


def _read_back(paths):
    return {p: pydicom.dcmread(p) for p in paths}  # no `force`: preamble and file meta required


def test_files_pixels_and_geometry(patient, tmp_path):
    series = read_series(patient)
    classes = _classes(series.hu.shape)
    written = write_masks(tmp_path / 'out', series, classes)
    expected = [tmp_path / 'out' / 'MASKS_DICOM' / organ / f'image_{k}'
                for organ in ORGANS.values() for k in range(SLICES)]
    assert written == expected and all(p.is_file() for p in expected)
    datasets = _read_back(written)
    for class_id, organ in ORGANS.items():
        for k, source in enumerate(series.headers):
            ds = datasets[tmp_path / 'out' / 'MASKS_DICOM' / organ / f'image_{k}']
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
            assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
            assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (8, 8, 7, 0)
            assert (ds.SamplesPerPixel, ds.PhotometricInterpretation) == (1, 'MONOCHROME2')
            assert (ds.Rows, ds.Columns) == (SIZE, SIZE)
            assert ds.SeriesDescription == f'fcn-jax {organ}'
            assert ds.InstanceNumber == source.InstanceNumber
            for keyword in GEOMETRY:
                assert ds[keyword].value == source[keyword].value, keyword
            pixels = ds.pixel_array
            assert pixels.dtype == np.uint8 and set(np.unique(pixels)) <= {0, 255}
            np.testing.assert_array_equal(pixels == 255, classes[k] == class_id)

    uids = {organ: {datasets[p].SeriesInstanceUID for p in written if p.parent.name == organ}
            for organ in ORGANS.values()}
    assert all(len(u) == 1 for u in uids.values())
    series_uids = [u.pop() for u in uids.values()]
    assert len(set(series_uids)) == len(ORGANS)
    assert series.headers[0].SeriesInstanceUID not in series_uids
    sop_uids = {ds.SOPInstanceUID for ds in datasets.values()}
    assert len(sop_uids) == len(written)
    assert not sop_uids & {h.SOPInstanceUID for h in series.headers}

    # Stable across runs: the same UIDs, byte for byte the same files.
    again = write_masks(tmp_path / 'again', series, classes)
    for a, b in zip(written, again):
        assert a.read_bytes() == b.read_bytes()


def test_round_trip_through_the_reader(patient, tmp_path):
    series = read_series(patient / 'PATIENT_DICOM')
    classes = series.truth
    out = tmp_path / 'out'
    write_masks(out, series, classes)
    shutil.copytree(patient / 'PATIENT_DICOM', out / 'PATIENT_DICOM')
    back = read_series(out)
    np.testing.assert_array_equal(back.truth, classes)
    assert back.labelled.tolist() == [True] * 4


def test_files_named_by_position_for_unnumbered_names(patient, tmp_path):
    folder = tmp_path / 'ct'
    folder.mkdir()
    for k in range(SLICES):
        name = f'slice{"abc"[SLICES - 1 - k]}.dcm'  # no number at the end, letters against z
        shutil.copy(patient / 'PATIENT_DICOM' / f'image_{k}', folder / name)
    series = read_series(folder)
    written = write_masks(tmp_path / 'out', series, _classes(series.hu.shape), {1: 'liver'})
    assert [p.name for p in written] == [f'image_{k}' for k in range(SLICES)]
    for k, p in enumerate(written):
        assert pydicom.dcmread(p).ImagePositionPatient == series.headers[k].ImagePositionPatient


def test_real_sample_without_frame_of_reference(ircad_sample, tmp_path):
    series = read_series(ircad_sample / 'unlabelled')
    assert 'FrameOfReferenceUID' not in series.headers[0]
    written = write_masks(tmp_path / 'out', series, _classes(series.hu.shape))
    assert sorted({p.name for p in written}) == sorted(f'image_{n}' for n in (40, 60, 80, 100))
    datasets = _read_back(written).values()
    assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1
    assert {ds.StudyInstanceUID for ds in datasets} == {series.headers[0].StudyInstanceUID}
    assert {str(ds.PatientName) for ds in datasets} == {'liver_01^patient'}


def test_bad_classes(patient, tmp_path):
    series = read_series(patient)
    with pytest.raises(ValueError, match='shape'):
        write_masks(tmp_path / 'out', series, np.zeros((SLICES, SIZE, SIZE + 1), np.uint8))
    with pytest.raises(ValueError, match='folder name'):
        write_masks(tmp_path / 'out', series, series.truth, {1: '../liver'})
