"""Bad input stops the build with one clear line naming the file, and leaves no dataset behind."""

import contextlib
import pathlib
import shutil
import subprocess
import sys

import pytest

from fcn_jax.datasets.ircad import DataError, archive, patient, phantom

REPO = pathlib.Path(__file__).resolve().parents[1]


def _read(root):
    with contextlib.ExitStack() as stack:
        sources = archive.find_patients(root, stack)
        if not sources:
            raise DataError(f'{root}: no patients')
        for source in sources:
            for _ in patient.read_patient(source):
                pass


@pytest.fixture
def manual_dir(tmp_path):
    """Manual dir with patient 1 extracted: 3 slices of 32x32."""
    phantom.write_archive(tmp_path / 'manual', [1], form='extracted', num_slices=3, size=32)
    return tmp_path / 'manual'


def _patient(manual_dir):
    return manual_dir / '3Dircadb1' / '3Dircadb1.1'


def test_the_fixture_reads(manual_dir):
    _read(manual_dir)


def test_truncated_ct_file(manual_dir):
    f = _patient(manual_dir) / 'PATIENT_DICOM' / 'image_1'
    f.write_bytes(f.read_bytes()[:1500])
    with pytest.raises(DataError, match=r'PATIENT_DICOM/image_1: .*(unreadable|pixel data)'):
        _read(manual_dir)


def test_non_dicom_file(manual_dir):
    (_patient(manual_dir) / 'PATIENT_DICOM' / 'image_2').write_text('not a CT slice\n')
    with pytest.raises(DataError, match=r'PATIENT_DICOM/image_2: not a DICOM file'):
        _read(manual_dir)


def test_empty_ct_folder(manual_dir):
    folder = _patient(manual_dir) / 'PATIENT_DICOM'
    shutil.rmtree(folder)
    folder.mkdir()
    with pytest.raises(DataError, match=r'3Dircadb1\.1: no CT slices: PATIENT_DICOM/ is missing or empty'):
        _read(manual_dir)


def test_missing_mask_slice(manual_dir):
    (_patient(manual_dir) / 'MASKS_DICOM' / 'liver' / 'image_1').unlink()
    with pytest.raises(DataError, match=r'MASKS_DICOM/liver/image_1: mask slice missing'):
        _read(manual_dir)


def test_mask_of_wrong_shape(manual_dir, tmp_path):
    phantom.write_archive(tmp_path / 'small', [1], form='extracted', num_slices=3, size=16)
    small = tmp_path / 'small' / '3Dircadb1' / '3Dircadb1.1' / 'MASKS_DICOM' / 'bone' / 'image_0'
    shutil.copy(small, _patient(manual_dir) / 'MASKS_DICOM' / 'bone' / 'image_0')
    with pytest.raises(DataError, match=r'bone/image_0: mask is 16x16, its CT slice is 32x32'):
        _read(manual_dir)


def test_mixed_series(manual_dir, tmp_path):
    phantom.write_archive(tmp_path / 'other', [2], form='extracted', num_slices=3, size=32)
    other = tmp_path / 'other' / '3Dircadb1' / '3Dircadb1.2' / 'PATIENT_DICOM' / 'image_0'
    shutil.copy(other, _patient(manual_dir) / 'PATIENT_DICOM' / 'image_7')
    with pytest.raises(DataError, match=r'mixed series'):
        _read(manual_dir)


def test_patient_found_twice(manual_dir):
    phantom.write_archive(manual_dir, [1], form='zip', num_slices=3, size=32)
    with pytest.raises(DataError, match=r'patient 1 found twice'):
        _read(manual_dir)


def test_corrupt_archive(tmp_path):
    (tmp_path / '3Dircadb1.zip').write_bytes(b'PK\x03\x04 broken')
    with pytest.raises(DataError, match=r'3Dircadb1.zip: not a readable zip file'):
        _read(tmp_path / '3Dircadb1.zip')


def _tfds_build(*args):
    tfds_cli = pathlib.Path(sys.executable).parent / 'tfds'
    return subprocess.run([str(tfds_cli), 'build', str(REPO / 'fcn_jax/datasets/ircad'), *args],
                          capture_output=True, text=True, timeout=300)


def test_tfds_build_reports_one_line_and_leaves_nothing(tmp_path):
    manual_dir = tmp_path / 'manual'
    phantom.write_archive(manual_dir, [1, 2], form='extracted', num_slices=3, size=512)
    (manual_dir / '3Dircadb1' / '3Dircadb1.2' / 'MASKS_DICOM' / 'liver' / 'image_2').unlink()
    data_dir = tmp_path / 'data'
    result = _tfds_build(f'--manual_dir={manual_dir}', f'--data_dir={data_dir}')
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith('ERROR: ')]
    assert len(errors) == 1 and '3Dircadb1.2/MASKS_DICOM/liver/image_2: mask slice missing' in errors[0]
    # TFDS keeps `ircad/.config/metadata.json` (which configs exist); no dataset file remains.
    left = [p for p in data_dir.rglob('*') if p.is_file() and '.config' not in p.parts]
    assert not left, left
    assert not (data_dir / 'ircad' / 'real').exists() or not any((data_dir / 'ircad' / 'real').iterdir())


def test_tfds_build_empty_manual_dir(tmp_path):
    (tmp_path / 'empty').mkdir()
    result = _tfds_build(f'--manual_dir={tmp_path / "empty"}', f'--data_dir={tmp_path / "data"}')
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert 'does not exist or is empty' in result.stderr
