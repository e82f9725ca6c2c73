"""Segmenting a new patient's CT series (`main.py --mode=predict`).

Writes to the output folder:
  MASKS_DICOM/<organ>/image_<N>   8-bit 0/255 DICOM masks with the source slices' geometry
  overlays/image_<N>.png           the windowed CT with coloured organ outlines
                                   ([ground truth | prediction] when masks lie beside the input)
  summary.json                     per organ: volume in mL and slice range; checkpoint, config, input
The output is written into a temporary sibling folder and renamed when complete, so an
interrupted run leaves nothing half-written; an existing output is replaced only with
`--overwrite`.
"""

import json
import os
import pathlib
import shutil

import ml_collections
import numpy as np
from PIL import Image
import tqdm

from fcn_jax import ct_series, dicom_masks, inference, overlays, volume_metrics
from fcn_jax.volume_eval import ORGANS


class OutputError(ValueError):
    """The output path cannot be written as asked."""


def check_output(output: pathlib.Path, *, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise OutputError(f'{output}: is a file; give a folder for --output')
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise OutputError(f'{output}: already exists and is not empty; pass --overwrite to replace it')


def summarize(series: ct_series.CtSeries, classes: np.ndarray) -> dict:
    """Per organ: volume in mL and the range of slice numbers holding it."""
    dy, dx = series.pixel_spacing
    voxel_ml = dy * dx * series.slice_spacing / 1000.0
    organs = {}
    for class_id, organ in ORGANS.items():
        present = (classes == class_id).any(axis=(1, 2))
        numbers = [int(n) for n, p in zip(series.slice_numbers, present) if p]
        organs[organ] = {
            'volume_ml': round(float((classes == class_id).sum()) * voxel_ml, 2),
            'slices': [min(numbers), max(numbers)] if numbers else None,
            'num_slices': len(numbers),
        }
    return organs


def run(config: ml_collections.ConfigDict, workdir: str, *, input_path: str, output: str,
        overwrite: bool = False, checkpoint: str = 'best', config_name: str = '') -> dict:
    """Predicts the series at `input_path` and writes masks, overlays and summary to `output`."""
    output_dir = pathlib.Path(output)
    check_output(output_dir, overwrite=overwrite)
    config = inference.trained_config(config, workdir)
    series = ct_series.read_series(input_path)
    predictor = inference.Predictor(config, workdir, checkpoint=checkpoint)
    with tqdm.tqdm(total=len(series.hu), desc='Segmenting', unit='slice') as bar:
        classes = predictor.predict(series.hu, progress=bar)
    if config.lcc:
        classes = volume_metrics.keep_largest_components(classes)
    summary = {
        'input': str(pathlib.Path(input_path).resolve()),
        'workdir': str(pathlib.Path(workdir).resolve()),
        'checkpoint_step': predictor.step,
        'config': config_name,
        'model': config.model,
        'tta': bool(config.tta), 'lcc': bool(config.lcc),
        'num_slices': int(len(series.hu)),
        'pixel_spacing_mm': [float(v) for v in series.pixel_spacing],
        'slice_spacing_mm': float(series.slice_spacing),
        'organs': summarize(series, classes),
    }
    tmp = output_dir.parent / f'.{output_dir.name}.partial-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        dicom_masks.write_masks(tmp, series, classes)
        _write_overlays(tmp / 'overlays', series, classes)
        (tmp / 'summary.json').write_text(json.dumps(summary, indent=2))
        if output_dir.exists():
            shutil.rmtree(output_dir)
        tmp.rename(output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _write_overlays(folder: pathlib.Path, series: ct_series.CtSeries, classes: np.ndarray) -> None:
    folder.mkdir()
    low, high = overlays.ABDOMEN_WINDOW
    for z, number in enumerate(series.slice_numbers):
        gray = (np.clip(series.hu[z], low, high) - low) / (high - low)
        truth = None if series.truth is None else series.truth[z]
        Image.fromarray(overlays.side_by_side(gray, truth, classes[z])).save(
            folder / f'image_{number}.png')
