"""Reading one patient's CT series for prediction, with its ground-truth masks when they exist.

`read_series(path)` accepts:
  - a folder holding one CT series: any file names, with or without extension, nested at
    any depth (hidden files, `__MACOSX/` and `DICOMDIR` are skipped; any other file that is
    not a DICOM slice of the series is an error naming it);
  - a `.zip` file holding one series (recognised by content, not by name);
  - an IRCAD patient folder `3Dircadb1.N/`, or any folder (or zip) holding `PATIENT_DICOM/`
    or `PATIENT_DICOM.zip`: the CT is read from there and ground-truth masks from
    `MASKS_DICOM/` or `MASKS_DICOM.zip` beside it, when present;
  - `PATIENT_DICOM/` or `PATIENT_DICOM.zip` itself, with masks taken from beside it.
Slices are ordered by their geometry, never by file name.
"""

import contextlib
import dataclasses
import io
import os
import pathlib

import numpy as np
import pydicom

from fcn_jax.datasets.ircad import dicom_series, labels, patient
from fcn_jax.datasets.ircad.archive import CT_FOLDER, MASKS_FOLDER, PatientSource, Tree, open_zip
from fcn_jax.datasets.ircad.dicom_series import SliceGeometry
from fcn_jax.datasets.ircad.errors import DataError

# DICOM media directories list the files of a CD; they are not slices.
_SKIPPED_NAMES = frozenset({'DICOMDIR'})


@dataclasses.dataclass
class CtSeries:
    """One CT series in z order (slice 0 has the lowest position along the slice normal).

    Attributes:
        source: where the slices were read from (for messages).
        hu: int16 [Z, H, W] Hounsfield units.
        geometries: per slice, its geometry (`name` is the full path used in messages).
        headers: per slice, the source file's DICOM header (read without pixel data).
        names: per slice, the file's path inside the series folder or zip.
        pixel_spacing: (row, column) pixel size in mm.
        slice_spacing: median distance between consecutive slices in mm (SliceThickness
            for a single slice; NaN when neither is known).
        slice_numbers: per slice, the N of the output file `image_N`: the number that ends
            the file name when every name ends in a distinct number (IRCAD's `image_N`),
            else the slice's position in z order.
        truth: uint8 [Z, H, W] class ids from the masks beside the CT, or None.
        labelled: bool [NUM_CLASSES], the classes the masks annotate, or None.
    """

    source: str
    hu: np.ndarray
    geometries: list[SliceGeometry]
    headers: list[pydicom.Dataset]
    names: list[str]
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    slice_numbers: list[int]
    truth: np.ndarray | None = None
    labelled: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)


def _is_skipped(path: str) -> bool:
    return path.rpartition('/')[2] in _SKIPPED_NAMES


def _tree(path: pathlib.Path, stack: contextlib.ExitStack) -> Tree:
    """Files under a folder, or inside a zip file, with paths relative to it."""
    if path.is_dir():
        return Tree.from_dir(path).sub(path.name)
    zf = stack.enter_context(open_zip(path, str(path)))
    return Tree.from_zip(zf, str(path))


def _beside(folder: pathlib.Path, names: list[str]) -> Tree:
    """The files and folders `names` of `folder` (and nothing else there), relative to `folder`."""
    files = {}
    for name in names:
        path = folder / name
        if path.is_dir():
            files.update(Tree.from_dir(path).files)
        elif path.is_file():
            files[name] = path.read_bytes
    return Tree(str(folder), files)


def _patient_roots(tree: Tree) -> list[str]:
    """Folders inside `tree` that hold `PATIENT_DICOM/` or `PATIENT_DICOM.zip` ('' for the root)."""
    roots = set()
    for path in tree.files:
        parts = path.split('/')
        if parts[-1] == f'{CT_FOLDER}.zip':
            roots.add('/'.join(parts[:-1]))
        for i, part in enumerate(parts[:-1]):
            if part == CT_FOLDER:
                roots.add('/'.join(parts[:i]))
    return sorted(roots)


def _locate(tree: Tree, stack: contextlib.ExitStack) -> tuple[Tree, Tree | None]:
    """(CT tree, masks tree or None): the IRCAD layout when `tree` holds one, else all of `tree`."""
    roots = _patient_roots(tree)
    if not roots:
        return tree, None
    if len(roots) > 1:
        shown = ', '.join(r or '.' for r in roots[:4])
        raise DataError(f'{tree.label}: holds {len(roots)} CT series folders ({shown}); '
                        'give the folder of one patient')
    return stack.enter_context(PatientSource(0, tree, roots[0]).open(masks_required=False))


def _slice_numbers(names: list[str]) -> list[int]:
    numbers = [dicom_series.index_from_name(n) for n in names]
    if None not in numbers and len(set(numbers)) == len(numbers):
        return numbers
    return list(range(len(names)))


def _slice_spacing(ordered: list[SliceGeometry]) -> float:
    z = np.array([g.z_position for g in ordered])
    if len(z) > 1 and np.all(np.isfinite(z)):
        return float(np.median(np.abs(np.diff(z))))
    return dicom_series.slice_thickness(ordered)


def _truth(masks: Tree, ordered: list[SliceGeometry], names: list[str],
           shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Class map [Z, H, W] and annotated classes from IRCAD organ mask folders.

    Organ folders are combined as in the dataset (`labels.folders_by_class`, `labels.compose`);
    mask slices are matched to CT slices by file name.
    """
    organs = patient.organ_files(masks)
    if not organs:
        raise DataError(f'{masks.label}: no organ mask folders')
    grouped = labels.folders_by_class(organs)
    truth = np.zeros((len(names), *shape), np.uint8)
    for k, (geometry, name) in enumerate(zip(ordered, names)):
        truth[k] = patient.slice_label(masks, organs, grouped, name.rpartition('/')[2], shape,
                                       geometry.name)
    return truth, labels.labelled_classes(grouped)


def _read(ct: Tree, masks: Tree | None) -> CtSeries:
    paths = sorted(p for p in ct.files if not _is_skipped(p))
    if not paths:
        raise DataError(f'{ct.label}: no DICOM files')
    geometries, headers = [], {}
    for path in paths:
        data = ct.read(path)
        name = f'{ct.label}/{path}'
        geometries.append(dicom_series.read_geometry(data, name))
        headers[name] = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    dicom_series.check_one_series(geometries, ct.label)
    ordered = dicom_series.sort_slices(geometries, ct.label)
    names = [g.name[len(ct.label) + 1:] for g in ordered]
    shape = ordered[0].shape
    hu = np.empty((len(ordered), *shape), np.int16)
    for k, (geometry, path) in enumerate(zip(ordered, names)):
        image = dicom_series.read_hu(ct.read(path), geometry.name)
        if image.shape != shape:
            raise DataError(f'{geometry.name}: pixel data is {image.shape[0]}x{image.shape[1]}, '
                            f'its header says {shape[0]}x{shape[1]}')
        hu[k] = image
    truth, labelled = _truth(masks, ordered, names, shape) if masks is not None else (None, None)
    return CtSeries(
        source=ct.label,
        hu=hu,
        geometries=ordered,
        headers=[headers[g.name] for g in ordered],
        names=names,
        pixel_spacing=ordered[0].pixel_spacing,
        slice_spacing=_slice_spacing(ordered),
        slice_numbers=_slice_numbers(names),
        truth=truth,
        labelled=labelled,
    )


def read_series(path: os.PathLike | str) -> CtSeries:
    """Reads one CT series (and its ground-truth masks when beside it) from a folder or zip.

    Raises DataError naming the file for a missing path, an empty folder, a file that is not
    a readable DICOM slice, slices of several series or sizes, or a missing mask slice.
    """
    path = pathlib.Path(os.path.abspath(path))
    if not path.exists():
        raise DataError(f'{path}: does not exist')
    with contextlib.ExitStack() as stack:
        if path.name in (CT_FOLDER, f'{CT_FOLDER}.zip'):
            tree = _beside(path.parent, [path.name, MASKS_FOLDER, f'{MASKS_FOLDER}.zip'])
        else:
            tree = _tree(path, stack)
        ct, masks = _locate(tree, stack)
        return _read(ct, masks)
