"""Per-patient volume evaluation (`main.py --mode=evaluate`).

Every slice of each eval patient is segmented at its stored resolution, the slices are
stacked into a volume in z order, and each annotated organ is scored in 3-D with the
DICOM pixel spacing and slice spacing (Dice, Jaccard, VOE, RVD, ASSD, HD95).
Organs not annotated for a patient are reported as such, never as 0.
"""

import dataclasses
import json
import math
import os
from typing import Iterator

from absl import logging
from clu import metric_writers
import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from fcn_jax import config_checks, inference, input_pipeline, volume_metrics
from fcn_jax.datasets.ircad import labels

ORGANS = {labels.LIVER: 'liver', labels.BONE: 'bone', labels.KIDNEY: 'kidney'}
NOT_ANNOTATED = 'not annotated'
METRICS = ('dice', 'jaccard', 'voe', 'rvd', 'assd', 'hd95')


@dataclasses.dataclass
class PatientVolume:
    patient_id: int
    hu: np.ndarray  # int16 [Z, H, W]
    truth: np.ndarray  # uint8 class ids [Z, H, W]
    labelled: np.ndarray  # bool [num_classes]
    spacing: tuple[float, float, float]  # (dz, dy, dx) mm
    slice_indices: np.ndarray  # int [Z]


def patient_volumes(config: ml_collections.ConfigDict, split: str) -> Iterator[PatientVolume]:
    """The patients of `split`, one volume at a time (memory: one patient)."""
    builder = input_pipeline.load_builder(config, splits=(split,))
    slices: list[dict] = []
    for example in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
        if slices and example['patient_id'] != slices[0]['patient_id']:
            yield _stack(slices)
            slices = []
        slices.append(example)
    if slices:
        yield _stack(slices)


def _stack(slices: list[dict]) -> PatientVolume:
    slices = sorted(slices, key=lambda s: float(s['z_position']))
    z = np.array([float(s['z_position']) for s in slices])
    dz = float(np.median(np.diff(z))) if len(z) > 1 else float(slices[0]['slice_thickness'])
    dy, dx = (float(v) for v in slices[0]['pixel_spacing'])
    return PatientVolume(
        patient_id=int(slices[0]['patient_id']),
        hu=np.stack([s['image'][..., 0] for s in slices]),
        truth=np.stack([s['mask'][..., 0] for s in slices]),
        labelled=np.asarray(slices[0]['labelled_classes'], bool),
        spacing=(abs(dz), dy, dx),
        slice_indices=np.array([int(s['slice_index']) for s in slices]))


def score(prediction: np.ndarray, volume: PatientVolume, *, surface: bool) -> dict:
    """Organ -> metrics (or NOT_ANNOTATED) for one patient."""
    out = {}
    for class_id, organ in ORGANS.items():
        if not volume.labelled[class_id]:
            out[organ] = NOT_ANNOTATED
            continue
        out[organ] = volume_metrics.organ_metrics(prediction == class_id, volume.truth == class_id,
                                                  volume.spacing, surface=surface)
    return out


def run(config: ml_collections.ConfigDict, workdir: str, *, checkpoint: str = 'best') -> dict:
    """Evaluates a checkpoint of `workdir` on every patient of `eval_split`; writes
    `<workdir>/eval/metrics.json`, prints a table and logs the means to TensorBoard."""
    config = inference.trained_config(config, workdir)
    config_checks.validate(config)
    input_pipeline.load_builder(config, splits=(config.eval_split,))
    predictor = inference.Predictor(config, workdir, checkpoint=checkpoint)
    patients = {}
    for volume in patient_volumes(config, config.eval_split):
        prediction = predictor.predict(volume.hu)
        if config.lcc:
            prediction = volume_metrics.keep_largest_components(prediction)
        patients[f'patient_{volume.patient_id}'] = score(prediction, volume,
                                                         surface=config.surface_metrics)
        logging.info('patient %d: %s', volume.patient_id, patients[f'patient_{volume.patient_id}'])
    summary = volume_metrics.summarize(patients)
    report = {
        'checkpoint_step': predictor.step, 'eval_split': config.eval_split,
        'tta': bool(config.tta), 'lcc': bool(config.lcc),
        'surface_metrics': bool(config.surface_metrics),
        'spacing_note': 'surface distances in mm; voe and rvd as fractions',
        'patients': patients, 'summary': summary,
    }
    _write_json(os.path.join(workdir, 'eval', 'metrics.json'), report)
    print(format_table(report))
    writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=False)
    writer.write_scalars(predictor.step, {
        f'eval_volume/{metric}_{organ}': value
        for organ, figures in summary.items() for metric, value in figures['mean'].items()
        if value is not None and math.isfinite(value)})
    writer.flush()
    return report


def _write_json(path: str, data: dict) -> None:
    tf.io.gfile.makedirs(os.path.dirname(path))
    tmp = f'{path}.tmp-{os.getpid()}'
    with tf.io.gfile.GFile(tmp, 'w') as f:
        json.dump(data, f, indent=2, allow_nan=True)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _cell(value) -> str:
    if value is None:
        return '-'
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f'{value:.3f}'


def format_table(report: dict) -> str:
    """The readable table printed by `--mode=evaluate`."""
    metrics = [m for m in METRICS if report['surface_metrics'] or m not in ('assd', 'hd95')]
    head = f'{"patient":<14}{"organ":<8}' + ''.join(
        f'{m + (" mm" if m in ("assd", "hd95") else ""):>10}' for m in metrics)
    lines = [f'checkpoint step {report["checkpoint_step"]}, split {report["eval_split"]}, '
             f'tta {"on" if report["tta"] else "off"}, lcc {"on" if report["lcc"] else "off"}',
             head, '-' * len(head)]
    for patient, organs in report['patients'].items():
        for i, (organ, figures) in enumerate(organs.items()):
            name = patient if i == 0 else ''
            if figures == NOT_ANNOTATED:
                lines.append(f'{name:<14}{organ:<8}  {NOT_ANNOTATED}')
            else:
                lines.append(f'{name:<14}{organ:<8}' + ''.join(f'{_cell(figures[m]):>10}'
                                                                for m in metrics))
    lines.append('-' * len(head))
    for organ, figures in report['summary'].items():
        for stat in ('mean', 'std'):
            lines.append(f'{stat:<14}{organ:<8}' + ''.join(
                f'{_cell(figures[stat].get(m)):>10}' for m in metrics))
    return '\n'.join(lines)
