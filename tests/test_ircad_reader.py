"""The IRCAD reader on real slices (when the shared sample is present) and on the phantom."""

import contextlib
import io
import zipfile

import numpy as np
import pydicom
import pytest

from fcn_jax.datasets.ircad import archive, dicom_series, labels, patient, phantom


def _read_all(root, **kwargs):
    with contextlib.ExitStack() as stack:
        sources = archive.find_patients(root, stack)
        return {s.patient_id: list(patient.read_patient(s, **kwargs)) for s in sources}


def test_real_sample(ircad_sample):
    examples = _read_all(ircad_sample, image_size=512)
    assert list(examples) == [17]  # `unlabelled/` holds no IRCAD patient folder.
    rows = [ex for _, ex in examples[17]]
    assert [ex['slice_index'] for ex in rows] == [40, 60, 84, 96]
    z = [ex['z_position'] for ex in rows]
    assert z == sorted(z) and z[0] == pytest.approx(64.0, abs=1e-3)
    for ex in rows:
        image, mask = ex['image'], ex['mask']
        assert image.shape == mask.shape == (512, 512, 1)
        assert image.dtype == np.int16 and mask.dtype == np.uint8
        assert image.min() == -1024 and 300 < image.max() < 3072  # air and bone, in HU
        counts = np.bincount(mask.ravel(), minlength=4)
        assert counts[labels.LIVER] > 1000 and counts[labels.BONE] > 1000
        assert counts[labels.KIDNEY] == 0
        assert ex['labelled_classes'].tolist() == [True, True, True, False]
        np.testing.assert_allclose(ex['pixel_spacing'], [0.743, 0.743], atol=1e-3)
        assert ex['slice_thickness'] == pytest.approx(1.6)
    # Liver pixels are soft tissue, bone pixels dense.
    image, mask = rows[1]['image'][..., 0], rows[1]['mask'][..., 0]
    assert 0 < np.median(image[mask == labels.LIVER]) < 200
    assert np.median(image[mask == labels.BONE]) > 150


def test_real_sample_liver_matches_mask_file(ircad_sample):
    """The class mask is the liver DICOM mask itself wherever no other class takes priority."""
    (_, ex), = [e for e in _read_all(ircad_sample)[17] if e[1]['slice_index'] == 60]
    with zipfile.ZipFile(ircad_sample / '3Dircadb1/3Dircadb1.17/MASKS_DICOM.zip') as zf:
        liver = pydicom.dcmread(io.BytesIO(zf.read('MASKS_DICOM/liver/image_60'))).pixel_array > 0
    np.testing.assert_array_equal(ex['mask'][..., 0] == labels.LIVER, liver)


def test_phantom_every_field(tmp_path):
    phantom.write_archive(tmp_path, [3], form='inner_zips', num_slices=12, size=64, kidneys=True)
    volume = phantom.make_volume(3, num_slices=12, size=64)
    rows = [ex for _, ex in _read_all(tmp_path, image_size=64)[3]]
    assert [ex['slice_index'] for ex in rows] == list(range(12))  # image_10 after image_9
    hu = np.stack([ex['image'][..., 0] for ex in rows])
    np.testing.assert_array_equal(hu, volume.hu)  # stored uint16 + intercept -1024 -> HU
    m = volume.masks
    expected = np.stack([labels.compose({
        labels.LIVER: m['liver'][i], labels.BONE: m['bone'][i],
        labels.KIDNEY: m['leftkidney'][i] | m['rightkidney'][i]}, (64, 64)) for i in range(12)])
    np.testing.assert_array_equal(np.stack([ex['mask'][..., 0] for ex in rows]), expected)
    for i, ex in enumerate(rows):
        assert ex['patient_id'] == 3
        assert ex['labelled_classes'].tolist() == [True, True, True, True]
        np.testing.assert_allclose(ex['pixel_spacing'], [volume.pixel_spacing] * 2, rtol=1e-6)
        assert ex['slice_thickness'] == pytest.approx(volume.slice_thickness)
        assert ex['z_position'] == pytest.approx(i * volume.slice_thickness)


def test_phantom_without_kidney_masks(tmp_path):
    phantom.write_archive(tmp_path, [2], form='extracted', num_slices=4, size=64, kidneys=False)
    rows = [ex for _, ex in _read_all(tmp_path)[2]]
    assert rows[0]['labelled_classes'].tolist() == [True, True, True, False]
    assert all((ex['mask'] != labels.KIDNEY).all() for ex in rows)


def _geometry(name, z, instance=None, **kw):
    fields = dict(series_uid='1.2', shape=(4, 4), orientation=(1, 0, 0, 0, 1, 0),
                  pixel_spacing=(1.0, 1.0), slice_thickness=1.0)
    fields.update(kw)
    return dicom_series.SliceGeometry(name=name, position=(0.0, 0.0, z),
                                      instance_number=instance, **fields)


def test_slices_sorted_by_geometry_not_name():
    names = ['image_10', 'image_9', 'image_2', 'image_1']
    slices = [_geometry(n, z) for n, z in zip(names, [-5.0, 7.5, 2.5, 0.0])]
    assert [s.name for s in dicom_series.sort_slices(slices, 'x')] == [
        'image_10', 'image_1', 'image_2', 'image_9']


def test_sort_uses_the_slice_normal():
    # Sagittal-like orientation: the normal is -x, so position x decides the order.
    orientation = (0, 1, 0, 0, 0, -1)
    slices = [dicom_series.SliceGeometry(
        name=f's{x}', series_uid='1', shape=(4, 4), position=(float(x), 0.0, 0.0),
        orientation=orientation, pixel_spacing=(1.0, 1.0), slice_thickness=1.0,
        instance_number=None) for x in (1, 3, 2)]
    assert [s.name for s in dicom_series.sort_slices(slices, 'x')] == ['s3', 's2', 's1']


def test_instance_number_breaks_ties_when_positions_missing():
    slices = [dicom_series.SliceGeometry(
        name=f's{i}', series_uid='1', shape=(4, 4), position=None, orientation=None,
        pixel_spacing=(1.0, 1.0), slice_thickness=1.0, instance_number=i) for i in (3, 1, 2)]
    assert [s.name for s in dicom_series.sort_slices(slices, 'x')] == ['s1', 's2', 's3']


@pytest.mark.parametrize('folder, expected', [
    ('liver', labels.LIVER), ('Liver', labels.LIVER), ('bone', labels.BONE),
    ('leftkidney', labels.KIDNEY), ('rightkidney', labels.KIDNEY), ('kidneys', labels.KIDNEY),
    ('livertumor01', None), ('livertumors', None), ('liverkyst', None), ('portalvein', None),
    ('leftkidneycyst', None), ('skin', None), ('artery', None),
])
def test_folder_classes(folder, expected):
    assert labels.class_of_folder(folder) == expected


def test_priority_liver_then_kidney_then_bone():
    ones = np.ones((2, 2), bool)
    assert labels.compose({labels.BONE: ones, labels.LIVER: ones}, (2, 2)).max() == labels.LIVER
    assert (labels.compose({labels.BONE: ones, labels.KIDNEY: ones}, (2, 2)) == labels.KIDNEY).all()
    assert (labels.compose({labels.KIDNEY: ones, labels.LIVER: ones}, (2, 2)) == labels.LIVER).all()
