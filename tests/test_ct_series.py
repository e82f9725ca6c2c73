"""Reading one CT series for prediction: every input form, the real sample, and bad input."""

import pathlib
import random
import shutil
import uuid
import zipfile

import numpy as np
import pydicom
import pytest

from fcn_jax.ct_series import read_series
from fcn_jax.datasets.ircad import DataError, labels, phantom

SLICES, SIZE = 4, 32


@pytest.fixture(scope='module')
def volume() -> phantom.Volume:
    return phantom.make_volume(1, num_slices=SLICES, size=SIZE)


@pytest.fixture(scope='module')
def expected_truth(volume) -> np.ndarray:
    m = volume.masks
    return labels.compose({labels.LIVER: m['liver'], labels.BONE: m['bone'],
                           labels.KIDNEY: m['leftkidney'] | m['rightkidney']}, volume.hu.shape)


@pytest.fixture(scope='module')
def patients(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Patient 1 as an extracted IRCAD folder and as a folder of inner zips."""
    root = tmp_path_factory.mktemp('patients')
    return {form: phantom.write_patient(root / form, 1, num_slices=SLICES, size=SIZE,
                                        inner_zips=form == 'inner_zips')
            for form in ('extracted', 'inner_zips')}


def _ct_files(patients) -> list[pathlib.Path]:
    return [patients['extracted'] / 'PATIENT_DICOM' / f'image_{k}' for k in range(SLICES)]


def _check_volume(series, volume) -> None:
    np.testing.assert_array_equal(series.hu, volume.hu)
    assert series.hu.dtype == np.int16
    assert len(series.geometries) == len(series.headers) == len(series.names) == SLICES
    z = [g.z_position for g in series.geometries]
    assert z == sorted(z)
    assert [float(h.ImagePositionPatient[2]) for h in series.headers] == z
    assert series.pixel_spacing == pytest.approx((380 / SIZE, 380 / SIZE))
    assert series.slice_spacing == pytest.approx(2.5)


@pytest.mark.parametrize('form', ['extracted', 'inner_zips'])
def test_ircad_patient_folder(patients, volume, expected_truth, form):
    series = read_series(patients[form])
    _check_volume(series, volume)
    assert series.names == [f'image_{k}' for k in range(SLICES)]
    assert series.slice_numbers == list(range(SLICES))
    np.testing.assert_array_equal(series.truth, expected_truth)
    assert series.truth.dtype == np.uint8
    assert series.labelled.tolist() == [True] * 4


@pytest.mark.parametrize('ct', ['PATIENT_DICOM', 'PATIENT_DICOM.zip'])
def test_ct_folder_itself_takes_masks_beside_it(patients, volume, expected_truth, ct):
    form = 'inner_zips' if ct.endswith('.zip') else 'extracted'
    series = read_series(patients[form] / ct)
    _check_volume(series, volume)
    np.testing.assert_array_equal(series.truth, expected_truth)


def test_folder_holding_ct_folder_without_masks(patients, volume, tmp_path):
    shutil.copytree(patients['extracted'] / 'PATIENT_DICOM', tmp_path / 'scan' / 'PATIENT_DICOM')
    series = read_series(tmp_path / 'scan')
    _check_volume(series, volume)
    assert series.truth is None and series.labelled is None


def test_loose_folder_of_random_names(patients, volume, tmp_path):
    files = _ct_files(patients)
    random.Random(0).shuffle(files)
    folder = tmp_path / 'loose'
    (folder / 'sub').mkdir(parents=True)
    for i, f in enumerate(files):
        shutil.copy(f, folder / ('sub' if i % 2 else '') / f'{uuid.uuid4()}.dcm')
    (folder / '.DS_Store').write_bytes(b'\x00\x01junk')
    (folder / '__MACOSX').mkdir()
    (folder / '__MACOSX' / '._x.dcm').write_bytes(b'junk')
    series = read_series(folder)
    _check_volume(series, volume)
    assert series.slice_numbers == list(range(SLICES))  # no numbers in the names: z positions
    assert series.truth is None and series.labelled is None


def test_numbers_come_from_names_and_order_from_geometry(patients, volume, tmp_path):
    folder = tmp_path / 'numbered'
    folder.mkdir()
    for k, f in enumerate(_ct_files(patients)):
        shutil.copy(f, folder / f'image_{100 - 10 * k}')  # names in the reverse order of z
    series = read_series(folder)
    _check_volume(series, volume)
    assert series.slice_numbers == [100, 90, 80, 70]
    assert series.names == ['image_100', 'image_90', 'image_80', 'image_70']


def test_zip_of_loose_files(patients, volume, tmp_path):
    path = tmp_path / 'series.bin'  # recognised by content, not by name
    with zipfile.ZipFile(path, 'w') as zf:
        for f in reversed(_ct_files(patients)):
            zf.write(f, f'CT{f.name[len("image_"):]}.dcm')
    series = read_series(path)
    _check_volume(series, volume)
    assert series.slice_numbers == list(range(SLICES))  # `CT3.dcm` ends in letters
    assert series.truth is None


def test_real_unlabelled_sample(ircad_sample):
    for path in (ircad_sample / 'unlabelled', ircad_sample / 'unlabelled' / 'PATIENT_DICOM'):
        series = read_series(path)
        assert series.hu.shape == (4, 512, 512) and series.hu.dtype == np.int16
        assert series.slice_numbers == [40, 60, 80, 100]  # by position: `image_100` sorts first by name
        z = [g.z_position for g in series.geometries]
        assert z == sorted(z)
        assert series.hu.min() == -1024
        assert series.truth is None and series.labelled is None


def test_real_labelled_sample(ircad_sample):
    series = read_series(ircad_sample / '3Dircadb1' / '3Dircadb1.17')
    assert series.slice_numbers == [40, 60, 84, 96]
    assert series.labelled.tolist() == [True, True, True, False]
    counts = np.bincount(series.truth.ravel(), minlength=4)
    assert counts[labels.LIVER] > 1000 and counts[labels.BONE] > 1000 and counts[labels.KIDNEY] == 0
    assert series.pixel_spacing == pytest.approx((0.743, 0.743), abs=1e-3)


# Bad input: one DataError naming the file.

def _loose_copy(patients, folder: pathlib.Path) -> pathlib.Path:
    shutil.copytree(patients['extracted'] / 'PATIENT_DICOM', folder)
    return folder


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match=r'nowhere: does not exist'):
        read_series(tmp_path / 'nowhere')


@pytest.mark.parametrize('junk', [False, True])
def test_empty_folder(tmp_path, junk):
    folder = tmp_path / 'empty'
    folder.mkdir()
    if junk:
        (folder / '.DS_Store').write_bytes(b'junk')
    with pytest.raises(DataError, match=r'empty: no DICOM files'):
        read_series(folder)


def test_non_dicom_file(patients, tmp_path):
    folder = _loose_copy(patients, tmp_path / 'ct')
    (folder / 'README').write_text('scan of 2024\n')
    with pytest.raises(DataError, match=r'ct/README: not a DICOM file'):
        read_series(folder)


def test_truncated_file(patients, tmp_path):
    folder = _loose_copy(patients, tmp_path / 'ct')
    f = folder / 'image_2'
    f.write_bytes(f.read_bytes()[:1500])
    with pytest.raises(DataError, match=r'ct/image_2: .*(unreadable|pixel data)'):
        read_series(folder)


def test_mixed_sizes(patients, tmp_path):
    folder = _loose_copy(patients, tmp_path / 'ct')
    small = phantom.write_patient(tmp_path / 'small', 1, num_slices=2, size=16, inner_zips=False)
    ds = pydicom.dcmread(small / 'PATIENT_DICOM' / 'image_0')
    ds.SeriesInstanceUID = pydicom.dcmread(folder / 'image_0').SeriesInstanceUID  # only the size differs
    ds.save_as(folder / 'small_0')
    with pytest.raises(DataError, match=r'ct: mixed series: .*ct/small_0 has image size \(16, 16\)'):
        read_series(folder)


def test_two_series_of_one_size(patients, tmp_path):
    folder = _loose_copy(patients, tmp_path / 'ct')
    other = phantom.write_patient(tmp_path / 'other', 2, num_slices=2, size=SIZE, inner_zips=False)
    shutil.copy(other / 'PATIENT_DICOM' / 'image_1', folder / 'other_1')
    with pytest.raises(DataError, match=r'mixed series: .*other_1 has SeriesInstanceUID'):
        read_series(folder)


def test_slice_twice(patients, tmp_path):
    folder = _loose_copy(patients, tmp_path / 'ct')
    shutil.copy(folder / 'image_1', folder / 'copy of image_1')
    with pytest.raises(DataError, match=r'ct/(copy of )?image_1 and .*image_1 lie at the same'):
        read_series(folder)


def test_not_a_zip(tmp_path):
    path = tmp_path / 'scan.zip'
    path.write_bytes(b'PK\x03\x04 broken')
    with pytest.raises(DataError, match=r'scan.zip: not a readable zip file'):
        read_series(path)


def test_several_patients(patients, tmp_path):
    for form in ('extracted', 'inner_zips'):
        shutil.copytree(patients[form], tmp_path / 'all' / f'3Dircadb1.{form}')
    with pytest.raises(DataError, match=r'all: holds 2 CT series folders'):
        read_series(tmp_path / 'all')


def test_missing_mask_slice(patients, tmp_path):
    folder = shutil.copytree(patients['extracted'], tmp_path / '3Dircadb1.1')
    (folder / 'MASKS_DICOM' / 'bone' / 'image_3').unlink()
    with pytest.raises(DataError, match=r'MASKS_DICOM/bone/image_3: mask slice missing'):
        read_series(folder)
