"""The synthetic IRCAD phantom: DICOM files, archive layouts, anatomy and arguments."""

import io
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_rescale
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, UID

from fcn_jax.datasets.ircad import phantom

SIZE = 64
SLICES = 6
PATIENT = 5
KIDNEYS = ('leftkidney', 'rightkidney')
NO_KIDNEYS = tuple(o for o in phantom.ORGAN_FOLDERS if o not in KIDNEYS)


@pytest.fixture(scope='module')
def volume() -> phantom.Volume:
    return phantom.make_volume(PATIENT, num_slices=SLICES, size=SIZE)


@pytest.fixture(scope='module')
def tall_volume() -> phantom.Volume:
    """More slices, so that organ ranges along z can be checked."""
    return phantom.make_volume(PATIENT, num_slices=30, size=SIZE)


@pytest.fixture(scope='module')
def extracted(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp('extracted')
    return phantom.write_patient(root, PATIENT, num_slices=SLICES, size=SIZE, inner_zips=False)


def _files(root: pathlib.Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob('*') if p.is_file()}


def _file_members(zf: zipfile.ZipFile) -> set[str]:
    return {n for n in zf.namelist() if not n.endswith('/')}


def _patient_names(pid: int, slices: int, organs) -> set[str]:
    names = {f'3Dircadb1.{pid}/PATIENT_DICOM/image_{k}' for k in range(slices)}
    names |= {f'3Dircadb1.{pid}/MASKS_DICOM/{o}/image_{k}' for o in organs for k in range(slices)}
    return names


def _dicom_tree(root: pathlib.Path, form: str) -> dict[str, bytes]:
    """Every DICOM file of a written archive as '3Dircadb1.N/.../image_k' -> bytes."""
    out: dict[str, bytes] = {}

    def add_inner(prefix: str, data: bytes) -> None:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            for name in _file_members(inner):
                out[f'{prefix}/{name}'] = inner.read(name)

    if form == 'zip':
        with zipfile.ZipFile(root / '3Dircadb1.zip') as outer:
            for name in _file_members(outer):
                add_inner(name.split('/')[1], outer.read(name))
    elif form == 'inner_zips':
        for path in (root / '3Dircadb1').glob('3Dircadb1.*/*.zip'):
            add_inner(path.parent.name, path.read_bytes())
    else:
        top = root / '3Dircadb1'
        out = {name: (top / name).read_bytes() for name in _files(top)}
    return out


# --------------------------------------------------------------------------
# Volume
# --------------------------------------------------------------------------


def test_volume_types(volume):
    assert volume.hu.dtype == np.int16 and volume.hu.shape == (SLICES, SIZE, SIZE)
    assert set(volume.masks) == set(phantom.ORGAN_FOLDERS)
    for mask in volume.masks.values():
        assert mask.dtype == bool and mask.shape == volume.hu.shape
    assert volume.pixel_spacing == pytest.approx(380.0 / SIZE)
    assert volume.slice_thickness == 2.5
    assert volume.hu.min() >= -1024 and volume.hu.max() <= 3071


def test_determinism():
    a = phantom.make_volume(2, num_slices=4, size=32, seed=3)
    b = phantom.make_volume(2, num_slices=4, size=32, seed=3)
    np.testing.assert_array_equal(a.hu, b.hu)
    for organ in phantom.ORGAN_FOLDERS:
        np.testing.assert_array_equal(a.masks[organ], b.masks[organ])
    assert not np.array_equal(a.hu, phantom.make_volume(2, num_slices=4, size=32, seed=4).hu)
    assert not np.array_equal(a.hu, phantom.make_volume(1, num_slices=4, size=32, seed=3).hu)


def test_masks_overlap_only_where_allowed(tall_volume):
    m = tall_volume.masks
    exclusive = ['liver', 'bone', 'leftkidney', 'rightkidney']
    for i, a in enumerate(exclusive):
        for b in exclusive[i + 1:]:
            assert not (m[a] & m[b]).any(), (a, b)
    for inner in ('livertumor1', 'portalvein'):
        assert m[inner].any(), inner
        assert not (m[inner] & ~m['liver']).any(), inner
    assert not (m['livertumor1'] & m['portalvein']).any()
    for organ in phantom.ORGAN_FOLDERS:
        assert not (m[organ] & ~m['skin']).any(), organ


def test_anatomy(tall_volume):
    hu, m = tall_volume.hu, tall_volume.masks
    half = SIZE / 2

    # Liver: image left (patient right), absent low down, largest in the upper half.
    assert np.nonzero(m['liver'])[2].mean() < half
    liver_area = m['liver'].sum(axis=(1, 2))
    assert liver_area[0] == 0 and (liver_area == 0).sum() >= 3
    assert (liver_area > 0).sum() >= 10
    assert np.argmax(liver_area) > len(liver_area) / 2

    # Spine at the posterior midline, in every slice; kidneys either side of it.
    bone = m['bone']
    assert bone.any(axis=(1, 2)).all()
    central = bone[:, :, SIZE // 3: 2 * SIZE // 3]
    spine_rows, spine_cols = np.nonzero(central)[1:]
    spine_col = spine_cols.mean() + SIZE // 3
    assert abs(spine_col - half) < SIZE * 0.05
    assert spine_rows.mean() > half  # posterior = bottom of the image
    left_col = np.nonzero(m['leftkidney'])[2].mean()
    right_col = np.nonzero(m['rightkidney'])[2].mean()
    assert right_col < spine_col < left_col  # leftkidney on the image right
    kidney_z = (m['leftkidney'] | m['rightkidney']).any(axis=(1, 2))
    assert 0 < kidney_z.sum() < len(kidney_z)
    assert np.nonzero(kidney_z)[0].mean() < np.nonzero(liver_area)[0].mean()

    # Plausible densities.
    assert np.median(hu[~m['skin']]) < -950
    parenchyma = m['liver'] & ~m['livertumor1'] & ~m['portalvein']
    liver_hu = np.median(hu[parenchyma])
    assert 50 < liver_hu < 130
    assert np.median(hu[m['livertumor1']]) < liver_hu - 20
    assert np.median(hu[m['portalvein']]) > liver_hu + 20
    assert np.median(hu[m['bone']]) > 250
    assert np.median(hu[m['leftkidney'] | m['rightkidney']]) > 80


@pytest.mark.parametrize('kwargs', [
    dict(size=0), dict(size=-3), dict(num_slices=0), dict(slice_thickness=0.0),
    dict(slice_thickness=float('nan')), dict(seed=-1), dict(size=2.5),
])
def test_make_volume_bad_args(kwargs):
    with pytest.raises(ValueError):
        phantom.make_volume(1, **kwargs)
    with pytest.raises(ValueError):
        phantom.make_volume(-1)


def test_tiny_and_odd_sizes_write(tmp_path):
    for size in (1, 7):
        folder = phantom.write_patient(tmp_path / str(size), 1, num_slices=1, size=size, inner_zips=False)
        ds = pydicom.dcmread(folder / 'MASKS_DICOM' / 'skin' / 'image_0')
        assert ds.pixel_array.shape == (size, size)


# --------------------------------------------------------------------------
# DICOM files
# --------------------------------------------------------------------------


def test_ct_slices_read_back(extracted, volume):
    series, sops = set(), set()
    for k in range(SLICES):
        path = extracted / 'PATIENT_DICOM' / f'image_{k}'
        assert path.read_bytes()[128:132] == b'DICM'
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == CTImageStorage and ds.Modality == 'CT'
        assert ds.BitsAllocated == 16 and ds.PixelRepresentation == 0
        assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
        stored = ds.pixel_array
        assert stored.dtype == np.uint16 and stored.shape == (SIZE, SIZE)
        np.testing.assert_array_equal(stored.astype(np.int32) - 1024, volume.hu[k])
        np.testing.assert_array_equal(apply_rescale(stored, ds), volume.hu[k])
        assert ds.InstanceNumber == k
        assert [float(v) for v in ds.ImagePositionPatient] == [0.0, 0.0, pytest.approx(2.5 * k)]
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == [volume.pixel_spacing] * 2
        assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == 2.5
        assert str(ds.PatientName) == f'phantom_{PATIENT}^patient'
        assert ds.PatientID == f'phantom-{PATIENT}'
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID, ds.SOPInstanceUID):
            assert UID(uid).is_valid
        series.add(ds.SeriesInstanceUID)
        sops.add(ds.SOPInstanceUID)
    assert len(series) == 1 and len(sops) == SLICES


def test_mask_slices_read_back(extracted, volume):
    ct = pydicom.dcmread(extracted / 'PATIENT_DICOM' / 'image_2')
    series = {ct.SeriesInstanceUID}
    for organ in phantom.ORGAN_FOLDERS:
        assert _files(extracted / 'MASKS_DICOM' / organ) == {f'image_{k}' for k in range(SLICES)}
        organ_series = set()
        for k in range(SLICES):
            ds = pydicom.dcmread(extracted / 'MASKS_DICOM' / organ / f'image_{k}')
            assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (8, 8, 7, 0)
            assert ds.PhotometricInterpretation == 'MONOCHROME2'
            pixels = ds.pixel_array
            assert pixels.dtype == np.uint8
            assert set(np.unique(pixels).tolist()) <= {0, 255}
            np.testing.assert_array_equal(pixels, volume.masks[organ][k].astype(np.uint8) * 255)
            if k == 2:
                for tag in ('PixelSpacing', 'ImagePositionPatient', 'ImageOrientationPatient',
                            'SliceThickness', 'Rows', 'Columns', 'InstanceNumber',
                            'StudyInstanceUID', 'FrameOfReferenceUID', 'PatientID'):
                    assert ds[tag].value == ct[tag].value, (organ, tag)
            organ_series.add(ds.SeriesInstanceUID)
        assert len(organ_series) == 1
        assert not organ_series & series
        series |= organ_series


def test_inner_zips_hold_the_same_files(tmp_path, extracted):
    folder = phantom.write_patient(tmp_path, PATIENT, num_slices=SLICES, size=SIZE)
    assert folder == tmp_path / f'3Dircadb1.{PATIENT}'
    assert _files(folder) == {'PATIENT_DICOM.zip', 'MASKS_DICOM.zip'}
    for name in ('PATIENT_DICOM', 'MASKS_DICOM'):
        with zipfile.ZipFile(folder / f'{name}.zip') as zf:
            members = _file_members(zf)
            assert members == {m for m in _files(extracted) if m.startswith(name + '/')}
            for member in members:
                assert zf.getinfo(member).compress_type == zipfile.ZIP_DEFLATED
                assert zf.read(member) == (extracted / member).read_bytes()
                pydicom.dcmread(io.BytesIO(zf.read(member)))


def test_kidneys_false_writes_no_kidney_folders(tmp_path):
    folder = phantom.write_patient(tmp_path, 2, num_slices=3, size=32, kidneys=False)
    with zipfile.ZipFile(folder / 'MASKS_DICOM.zip') as zf:
        organs = {n.split('/')[1] for n in _file_members(zf)}
    assert organs == set(NO_KIDNEYS)
    # The kidneys are still in the CT.
    volume = phantom.make_volume(2, num_slices=3, size=32)
    assert volume.masks['leftkidney'].any() or volume.masks['rightkidney'].any()


# --------------------------------------------------------------------------
# Archive forms
# --------------------------------------------------------------------------

ARCHIVE_ARGS = dict(num_slices=2, size=16, seed=1, kidneys=[1])
EXPECTED_TREE = _patient_names(1, 2, phantom.ORGAN_FOLDERS) | _patient_names(2, 2, NO_KIDNEYS)


@pytest.fixture(scope='module')
def archives(tmp_path_factory) -> dict[str, tuple[pathlib.Path, pathlib.Path]]:
    out = {}
    for form in phantom.ARCHIVE_FORMS:
        root = tmp_path_factory.mktemp(form)
        out[form] = (root, phantom.write_archive(root, [1, 2], form=form, **ARCHIVE_ARGS))
    return out


def test_zip_form_members(archives):
    root, path = archives['zip']
    assert path == root / '3Dircadb1.zip'
    assert _files(root) == {'3Dircadb1.zip'}
    with zipfile.ZipFile(path) as zf:
        assert _file_members(zf) == {f'3Dircadb1/3Dircadb1.{p}/{n}_DICOM.zip'
                                     for p in (1, 2) for n in ('PATIENT', 'MASKS')}
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


def test_inner_zips_form_members(archives):
    root, path = archives['inner_zips']
    assert path == root / '3Dircadb1'
    assert _files(root) == {f'3Dircadb1/3Dircadb1.{p}/{n}_DICOM.zip'
                            for p in (1, 2) for n in ('PATIENT', 'MASKS')}


def test_extracted_form_members(archives):
    root, path = archives['extracted']
    assert path == root / '3Dircadb1'
    assert _files(path) == EXPECTED_TREE
    assert _files(root) == {f'3Dircadb1/{n}' for n in EXPECTED_TREE}


def test_all_forms_hold_identical_dicom(archives):
    trees = {form: _dicom_tree(root, form) for form, (root, _) in archives.items()}
    for form, tree in trees.items():
        assert set(tree) == EXPECTED_TREE, form
        assert tree == trees['extracted'], form


def test_rewrite_replaces_patient_and_leaves_no_temporaries(tmp_path):
    first = phantom.write_patient(tmp_path, 1, num_slices=2, size=16, inner_zips=False)
    second = phantom.write_patient(tmp_path, 1, num_slices=3, size=16, inner_zips=False, kidneys=False)
    assert first == second
    assert [p.name for p in tmp_path.iterdir()] == ['3Dircadb1.1']
    assert _files(second) == {n.split('/', 1)[1] for n in _patient_names(1, 3, NO_KIDNEYS)}


@pytest.mark.parametrize('patients, kwargs', [
    ([1], dict(form='tar')),
    ([1], dict(size=0)),
    ([1], dict(size=-1)),
    ([1], dict(num_slices=0)),
    ([1], dict(slice_thickness=-2.5)),
    ([1], dict(kidneys='1')),
    ([1], dict(colour=True)),
    ([], {}),
    ([1, 1], {}),
    ([-2], {}),
    ('12', {}),
])
def test_write_archive_bad_args(tmp_path, patients, kwargs):
    with pytest.raises(ValueError):
        phantom.write_archive(tmp_path, patients, **kwargs)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def test_main(tmp_path, capsys):
    assert phantom.main(['--out', str(tmp_path), '--patients', '1,3', '--slices', '2',
                         '--size', '16', '--form', 'inner_zips', '--no-kidneys']) == 0
    printed = capsys.readouterr().out
    assert 'inner_zips' in printed and '3Dircadb1.3' in printed
    with zipfile.ZipFile(tmp_path / '3Dircadb1' / '3Dircadb1.3' / 'MASKS_DICOM.zip') as zf:
        assert {n.split('/')[1] for n in _file_members(zf)} == set(NO_KIDNEYS)
    with pytest.raises(SystemExit) as err:
        phantom.main(['--out', str(tmp_path), '--size', '0'])
    assert err.value.code == 2


def test_script_runs_by_path(tmp_path):
    script = pathlib.Path(phantom.__file__)
    result = subprocess.run(
        [sys.executable, str(script), '--out', str(tmp_path), '--patients', '2-3', '--slices', '2',
         '--size', '16', '--form', 'zip'],
        capture_output=True, text=True, check=True, timeout=60)
    assert '3Dircadb1.zip' in result.stdout
    with zipfile.ZipFile(tmp_path / '3Dircadb1.zip') as zf:
        assert '3Dircadb1/3Dircadb1.3/MASKS_DICOM.zip' in zf.namelist()
