"""Reading CT slices and masks from DICOM files, and ordering a series by its geometry.

Everything here takes the raw bytes of one file plus a `name` used in error
messages, so the same code reads loose files, zip members and nested zips.
"""

import dataclasses
import io
import re

import numpy as np
import pydicom
from pydicom.pixels import apply_rescale

from .errors import DataError

_INT16 = np.iinfo(np.int16)


@dataclasses.dataclass(frozen=True)
class SliceGeometry:
    """Where a slice lies in patient space (DICOM LPS, millimetres)."""

    name: str
    series_uid: str
    shape: tuple[int, int]
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float]
    slice_thickness: float | None
    instance_number: int | None

    @property
    def normal(self) -> np.ndarray:
        row, col = np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:])
        return np.cross(row, col)

    @property
    def z_position(self) -> float:
        """Position along the slice normal (mm); the slice's coordinate in the stack."""
        if self.position is None:
            return float('nan')
        if self.orientation is None:
            return float(self.position[2])
        return float(np.dot(self.position, self.normal))


def _parse(data: bytes, name: str, *, pixels: bool) -> pydicom.Dataset:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels)
    except pydicom.errors.InvalidDicomError:
        raise DataError(f'{name}: not a DICOM file') from None
    except Exception as e:  # pydicom raises many types on truncated input.
        raise DataError(f'{name}: unreadable DICOM file ({type(e).__name__}: {e})') from None
    if pixels and 'PixelData' not in ds:
        raise DataError(f'{name}: DICOM file holds no pixel data (truncated?)')
    return ds


def _floats(ds: pydicom.Dataset, keyword: str, count: int, name: str) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    if value is None or value == '':
        return None
    try:
        values = tuple(float(v) for v in (value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]))
    except (TypeError, ValueError):
        raise DataError(f'{name}: bad {keyword} {value!r}') from None
    if len(values) != count or not all(np.isfinite(values)):
        raise DataError(f'{name}: bad {keyword} {value!r}')
    return values


def read_geometry(data: bytes, name: str) -> SliceGeometry:
    """Reads the header of one slice (no pixel data is decoded)."""
    ds = _parse(data, name, pixels=False)
    rows, columns = ds.get('Rows'), ds.get('Columns')
    if not rows or not columns:
        raise DataError(f'{name}: DICOM file is not an image (no Rows/Columns)')
    spacing = _floats(ds, 'PixelSpacing', 2, name)
    if spacing is None:
        raise DataError(f'{name}: no PixelSpacing')
    thickness = _floats(ds, 'SliceThickness', 1, name)
    instance = ds.get('InstanceNumber')
    return SliceGeometry(
        name=name,
        series_uid=str(ds.get('SeriesInstanceUID', '')),
        shape=(int(rows), int(columns)),
        position=_floats(ds, 'ImagePositionPatient', 3, name),
        orientation=_floats(ds, 'ImageOrientationPatient', 6, name),
        pixel_spacing=spacing,
        slice_thickness=thickness[0] if thickness else None,
        instance_number=int(instance) if instance not in (None, '') else None,
    )


def _pixel_array(ds: pydicom.Dataset, name: str) -> np.ndarray:
    try:
        array = ds.pixel_array
    except Exception as e:  # Truncated or unsupported pixel data.
        raise DataError(f'{name}: pixel data unreadable ({e})') from None
    if array.ndim != 2:
        raise DataError(f'{name}: expected one 2-D frame, got pixel array of shape {array.shape}')
    return array


def read_hu(data: bytes, name: str) -> np.ndarray:
    """CT slice in Hounsfield units (int16 [H, W]), RescaleSlope/Intercept applied."""
    ds = _parse(data, name, pixels=True)
    hu = np.rint(apply_rescale(_pixel_array(ds, name), ds))
    if hu.min() < _INT16.min or hu.max() > _INT16.max:
        raise DataError(f'{name}: HU values [{hu.min()}, {hu.max()}] do not fit int16')
    return hu.astype(np.int16)


def read_mask(data: bytes, name: str) -> np.ndarray:
    """Binary organ mask (bool [H, W]); any value > 0 is inside (files use 255 or 1)."""
    ds = _parse(data, name, pixels=True)
    return _pixel_array(ds, name) > 0


def check_one_series(slices: list[SliceGeometry], what: str) -> None:
    """Raises DataError unless all slices belong to one series with one geometry."""
    if not slices:
        raise DataError(f'{what}: no DICOM slices')
    first = slices[0]
    for s in slices[1:]:
        for field, label in (('series_uid', 'SeriesInstanceUID'), ('shape', 'image size'),
                             ('pixel_spacing', 'PixelSpacing')):
            a, b = getattr(first, field), getattr(s, field)
            same = np.allclose(a, b, atol=1e-3) if field == 'pixel_spacing' else a == b
            if not same:
                raise DataError(f'{what}: mixed series: {s.name} has {label} {b} '
                                f'but {first.name} has {a}')
        if (first.orientation is None) != (s.orientation is None) or (
                first.orientation is not None
                and not np.allclose(first.orientation, s.orientation, atol=1e-3)):
            raise DataError(f'{what}: mixed series: {s.name} and {first.name} have different '
                            'ImageOrientationPatient')


def sort_slices(slices: list[SliceGeometry], what: str) -> list[SliceGeometry]:
    """Orders slices along the stack: by position on the slice normal, then InstanceNumber.

    Never by file name (`image_10` comes after `image_9`). Two slices at the
    same position mean two series are mixed in one folder.
    """
    if all(s.position is not None for s in slices):
        ordered = sorted(slices, key=lambda s: (s.z_position, s.instance_number or 0))
        for a, b in zip(ordered, ordered[1:]):
            if abs(a.z_position - b.z_position) < 1e-3:
                raise DataError(f'{what}: {a.name} and {b.name} lie at the same position '
                                f'z={a.z_position:.2f} mm (two series mixed?)')
        return ordered
    if all(s.instance_number is not None for s in slices):
        return sorted(slices, key=lambda s: s.instance_number)
    missing = next(s for s in slices if s.position is None and s.instance_number is None)
    raise DataError(f'{what}: {missing.name} has neither ImagePositionPatient nor '
                    'InstanceNumber: slices cannot be ordered')


def slice_thickness(ordered: list[SliceGeometry]) -> float:
    """SliceThickness of the series, or the median spacing of positions when it is absent."""
    if ordered[0].slice_thickness:
        return ordered[0].slice_thickness
    z = np.array([s.z_position for s in ordered])
    if len(z) > 1 and np.all(np.isfinite(z)):
        return float(np.median(np.diff(z)))
    return float('nan')


_INDEX = re.compile(r'(\d+)$')


def index_from_name(name: str) -> int | None:
    """The N of a file named `image_N` (trailing digits of the base name), or None."""
    match = _INDEX.search(name.rsplit('/', 1)[-1])
    return int(match.group(1)) if match else None
