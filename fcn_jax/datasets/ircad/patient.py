"""Reading one IRCAD patient into per-slice examples: HU image, class mask and geometry."""

from typing import Iterator

from absl import logging
import numpy as np

from . import dicom_series, labels
from .archive import PatientSource, Tree
from .errors import DataError


def _ct_slices(ct: Tree) -> list[dicom_series.SliceGeometry]:
    """Headers of every CT slice, ordered along the stack."""
    what = ct.label
    if not ct.files:
        raise DataError(f'{what}: empty folder, no CT slices')
    slices = [dicom_series.read_geometry(ct.read(path), f'{ct.label}/{path}')
              for path in sorted(ct.files)]
    dicom_series.check_one_series(slices, what)
    return dicom_series.sort_slices(slices, what)


def organ_files(masks: Tree) -> dict[str, dict[str, str]]:
    """Organ folder -> {slice file name -> path in the masks tree}."""
    organs: dict[str, dict[str, str]] = {}
    for path in masks.files:
        organ, _, name = path.rpartition('/')
        if organ and '/' not in organ:
            organs.setdefault(organ, {})[name] = path
    return organs


def slice_label(masks: Tree, organs: dict[str, dict[str, str]], grouped: dict[int, list[str]],
                name: str, shape: tuple[int, int], ct_name: str) -> np.ndarray:
    """Class-id map (uint8 [H, W]) of the CT slice file `name` from its organ mask files.

    `organs` is `organ_files(masks)`, `grouped` is `labels.folders_by_class(organs)`.
    Raises DataError for a missing mask slice or one of another shape than the CT slice.
    """
    class_masks = {}
    for class_id, folders in grouped.items():
        union = np.zeros(shape, bool)
        for folder in folders:
            path = organs[folder].get(name)
            if path is None:
                raise DataError(f'{masks.label}/{folder}/{name}: mask slice missing '
                                f'for CT slice {ct_name}')
            mask = dicom_series.read_mask(masks.read(path), f'{masks.label}/{path}')
            if mask.shape != shape:
                raise DataError(f'{masks.label}/{path}: mask is {mask.shape[0]}x{mask.shape[1]}, '
                                f'its CT slice is {shape[0]}x{shape[1]}')
            union |= mask
        class_masks[class_id] = union
    return labels.compose(class_masks, shape)


def read_patient(source: PatientSource, *, image_size: int | None = None) -> Iterator[tuple[str, dict]]:
    """Yields (key, example) for every CT slice of `source`, in z order.

    Example fields: image (int16 HU [H, W, 1]), mask (uint8 class ids [H, W, 1]),
    labelled_classes (bool [4]), patient_id, slice_index (the N of `image_N`),
    pixel_spacing (mm [2]), slice_thickness (mm), z_position (mm).

    Raises DataError naming the file for any bad input: unreadable or non-DICOM
    files, mixed series, a mask missing for a CT slice or of the wrong shape,
    slices of a size other than `image_size`.
    """
    pid = source.patient_id
    with source.open() as (ct, masks):
        ordered = _ct_slices(ct)
        organs = organ_files(masks)
        if not organs:
            raise DataError(f'{masks.label}: no organ mask folders')
        grouped = labels.folders_by_class(organs)
        annotated = labels.labelled_classes(grouped)
        thickness = dicom_series.slice_thickness(ordered)
        shape = ordered[0].shape
        if image_size is not None and shape != (image_size, image_size):
            raise DataError(f'{ordered[0].name}: slice is {shape[0]}x{shape[1]}, '
                            f'expected {image_size}x{image_size}')
        ignored = sorted(set(organs) - {f for fs in grouped.values() for f in fs})
        logging.info('patient %d: %d slices of %dx%d, %.3f mm pixels, %.2f mm thick; annotated: %s; '
                     'folders not used as classes: %s', pid, len(ordered), *shape,
                     ordered[0].pixel_spacing[0], thickness,
                     [labels.CLASS_NAMES[c] for c in np.flatnonzero(annotated)], ignored)

        counts = np.zeros(labels.NUM_CLASSES, np.int64)
        for geometry in ordered:
            name = geometry.name.rpartition('/')[2]
            index = dicom_series.index_from_name(name)
            if index is None:
                raise DataError(f'{geometry.name}: file name does not end in a slice number')
            label = slice_label(masks, organs, grouped, name, shape, geometry.name)
            counts += np.bincount(label.ravel(), minlength=labels.NUM_CLASSES)
            image = dicom_series.read_hu(ct.read(geometry.name[len(ct.label) + 1:]), geometry.name)
            yield f'{pid:02d}_{index:04d}', {
                'image': image[..., None],
                'mask': label[..., None],
                'labelled_classes': annotated,
                'patient_id': pid,
                'slice_index': index,
                'pixel_spacing': np.asarray(geometry.pixel_spacing, np.float32),
                'slice_thickness': np.float32(thickness),
                'z_position': np.float32(geometry.z_position),
            }
        fractions = counts / max(counts.sum(), 1)
        logging.info('patient %d: class pixel fractions %s', pid,
                     ', '.join(f'{n} {f:.4f}' for n, f in zip(labels.CLASS_NAMES, fractions)))
