"""`--mode=predict`: masks a viewer overlays on the CT, PNG overlays, summary; bad input."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from PIL import Image

from fcn_jax import ct_series, predict
from fcn_jax.datasets.ircad import phantom

from conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def patient_dir(tmp_path_factory):
    """A new phantom patient (not in the training data), 5 slices of 96x96, masks beside it."""
    root = tmp_path_factory.mktemp('new_patient')
    return phantom.write_patient(root, 9, num_slices=5, size=96, inner_zips=False)


def test_predict_writes_masks_overlays_and_summary(trained, tiny_data_dir, patient_dir, tmp_path):
    _, workdir = trained
    out = tmp_path / 'out'
    summary = predict.run(tiny_config(tiny_data_dir), str(workdir), input_path=str(patient_dir),
                          output=str(out), checkpoint='latest', config_name='tiny')
    assert summary['num_slices'] == 5 and summary['checkpoint_step'] == 4
    assert set(summary['organs']) == {'liver', 'bone', 'kidney'}
    assert json.loads((out / 'summary.json').read_text()) == summary
    source = {int(p.name.split('_')[1]): pydicom.dcmread(p)
              for p in (patient_dir / 'PATIENT_DICOM').iterdir()}
    for organ in ('liver', 'bone', 'kidney'):
        files = sorted((out / 'MASKS_DICOM' / organ).iterdir())
        assert [f.name for f in files] == [f'image_{i}' for i in range(5)]
        for f in files:
            mask = pydicom.dcmread(f)
            ct = source[int(f.name.split('_')[1])]
            assert mask.pixel_array.shape == (96, 96)  # back at the source size
            assert set(np.unique(mask.pixel_array)) <= {0, 255}
            assert [float(v) for v in mask.ImagePositionPatient] == [
                float(v) for v in ct.ImagePositionPatient]
            assert [float(v) for v in mask.PixelSpacing] == [float(v) for v in ct.PixelSpacing]
            assert mask.StudyInstanceUID == ct.StudyInstanceUID
    pngs = sorted((out / 'overlays').iterdir())
    assert len(pngs) == 5
    with Image.open(pngs[0]) as image:
        assert image.format == 'PNG' and image.size[0] > 2 * 96  # truth | prediction
    # The summary's volumes are the written masks' voxels times the voxel volume.
    series = ct_series.read_series(patient_dir)
    voxel_ml = series.pixel_spacing[0] * series.pixel_spacing[1] * series.slice_spacing / 1000
    for organ in ('liver', 'bone', 'kidney'):
        voxels = sum(int((pydicom.dcmread(f).pixel_array > 0).sum())
                     for f in (out / 'MASKS_DICOM' / organ).iterdir())
        assert summary['organs'][organ]['volume_ml'] == pytest.approx(voxels * voxel_ml, abs=0.01)


def test_existing_output_is_refused_then_overwritten(trained, tiny_data_dir, patient_dir, tmp_path):
    _, workdir = trained
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('mine')
    with pytest.raises(predict.OutputError, match='pass --overwrite'):
        predict.run(tiny_config(tiny_data_dir), str(workdir), input_path=str(patient_dir),
                    output=str(out))
    assert (out / 'keep.txt').read_text() == 'mine'
    predict.run(tiny_config(tiny_data_dir), str(workdir), input_path=str(patient_dir),
                output=str(out), overwrite=True)
    assert not (out / 'keep.txt').exists() and (out / 'summary.json').exists()
    assert not list(tmp_path.glob('.out.partial-*'))


def _predict_cli(workdir, data_dir, input_path, output, *extra):
    return subprocess.run(
        [sys.executable, str(REPO / 'main.py'), '--config', str(REPO / 'configs/quickstart.py'),
         '--workdir', str(workdir), '--mode', 'predict', '--input', str(input_path),
         '--output', str(output), f'--config.data_dir={data_dir}', *extra],
        capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.mark.parametrize('case', ['empty', 'not_dicom', 'truncated', 'no_checkpoint',
                                  'output_is_file'])
def test_bad_input_one_line_exit_2(trained, tiny_data_dir, patient_dir, tmp_path, case):
    _, workdir = trained
    series = tmp_path / 'series'
    series.mkdir()
    output = tmp_path / 'out'
    expected = {'empty': 'no DICOM files', 'not_dicom': 'not a DICOM file',
                'truncated': 'pixel data unreadable', 'no_checkpoint': 'no trained model',
                'output_is_file': 'is a file'}[case]
    for f in (patient_dir / 'PATIENT_DICOM').iterdir():
        (series / f.name).write_bytes(f.read_bytes())
    if case == 'empty':
        for f in series.iterdir():
            f.unlink()
    elif case == 'not_dicom':
        (series / 'image_2').write_text('hello')
    elif case == 'truncated':
        data = (series / 'image_2').read_bytes()
        (series / 'image_2').write_bytes(data[:len(data) - 3000])
    elif case == 'no_checkpoint':
        workdir = tmp_path / 'untrained'
    elif case == 'output_is_file':
        output.write_text('a file')
    result = _predict_cli(workdir, tiny_data_dir, series, output)
    assert result.returncode == 2, result.stderr[-2000:]
    assert 'Traceback' not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('ERROR: ') and expected in last, last
    if case != 'output_is_file':
        assert not output.exists()
    assert not list(tmp_path.glob('.out.partial-*'))
