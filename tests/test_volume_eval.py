"""`--mode=evaluate`: per-patient volume metrics of a trained checkpoint."""

import json
import math

import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from fcn_jax import modes, volume_eval

from conftest import tiny_config


def test_evaluate_writes_metrics_table_and_tensorboard(trained, tiny_data_dir, capsys):
    _, workdir = trained
    # Inference knobs come from the command line; patient 2 has no kidney annotation.
    config = tiny_config(tiny_data_dir, eval_split='patient_2+patient_3', lcc=True,
                         width_multiplier=0.5)  # a model knob: the workdir's value wins
    report = modes.run_evaluate(config, str(workdir), checkpoint='latest')
    assert report['checkpoint_step'] == 4 and report['lcc'] and not report['tta']
    assert set(report['patients']) == {'patient_2', 'patient_3'}
    assert report['patients']['patient_2']['kidney'] == volume_eval.NOT_ANNOTATED
    liver = report['patients']['patient_3']['liver']
    assert set(liver) == {'dice', 'jaccard', 'voe', 'rvd', 'assd', 'hd95'}
    assert 0 <= liver['dice'] <= 1 and math.isclose(liver['voe'], 1 - liver['jaccard'])
    assert report['summary']['kidney']['n']['dice'] == 1  # only patient 3 counts for kidney
    on_disk = json.loads((workdir / 'eval' / 'metrics.json').read_text())
    assert on_disk['patients']['patient_3']['liver']['dice'] == liver['dice']
    table = capsys.readouterr().out
    assert 'patient_2' in table and 'not annotated' in table and 'hd95 mm' in table
    acc = event_accumulator.EventAccumulator(str(workdir), size_guidance={'tensors': 0})
    acc.Reload()
    dice = acc.Tensors('eval_volume/dice_liver')
    assert dice[-1].step == 4
    np.testing.assert_allclose(float(tf.make_ndarray(dice[-1].tensor_proto)),
                               report['summary']['liver']['mean']['dice'], rtol=1e-6)


def test_volumes_are_stacked_in_z_order_with_spacing(tiny_data_dir):
    volumes = list(volume_eval.patient_volumes(tiny_config(tiny_data_dir), 'patient_1+patient_2'))
    assert [v.patient_id for v in volumes] == [1, 2]
    v = volumes[0]
    assert v.hu.shape == (6, 64, 64) and v.truth.shape == (6, 64, 64)
    assert list(v.slice_indices) == list(range(6))
    assert v.spacing[0] == 2.5 and math.isclose(v.spacing[1], 380 / 64, rel_tol=1e-6)
