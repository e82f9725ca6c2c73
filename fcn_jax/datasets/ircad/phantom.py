"""Synthetic abdominal CT phantom written in the 3D-IRCADb-01 DICOM layout.

The phantom is a stack of axial slices (index 0 = most inferior) through a
stylised abdomen: subcutaneous fat, muscle wall, bowel loops, stomach, spleen,
pancreas, aorta/IVC, liver (with a tumour and portal-vein branches), kidneys,
spine and ribs, plus Gaussian noise. Radiological convention: image left is
the patient's right, anterior is at the top of the image.

Files are real DICOM (Part 10, Explicit VR Little Endian, CT Image Storage) and
are laid out like the IRCAD archive::

    3Dircadb1.zip
      3Dircadb1/3Dircadb1.N/PATIENT_DICOM.zip   -> PATIENT_DICOM/image_k
      3Dircadb1/3Dircadb1.N/MASKS_DICOM.zip     -> MASKS_DICOM/<organ>/image_k

Unlike the real archive, CT pixels are stored unsigned with
RescaleIntercept -1024 (HU = stored - 1024), so readers must apply the rescale.

Command line::

    python -m fcn_jax.datasets.ircad.phantom --out DIR --patients 1-3 --size 64 --form zip

This module only depends on the standard library, numpy, scipy and pydicom.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import os
import pathlib
import shutil
import sys
import zipfile
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any, BinaryIO, Union

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)
from scipy import ndimage

__all__ = [
    'ARCHIVE_FORMS',
    'FIELD_OF_VIEW_MM',
    'KIDNEY_FOLDERS',
    'ORGAN_FOLDERS',
    'RESCALE_INTERCEPT',
    'Volume',
    'main',
    'make_volume',
    'write_archive',
    'write_patient',
]

ORGAN_FOLDERS: tuple[str, ...] = (
    'liver',
    'bone',
    'leftkidney',
    'rightkidney',
    'livertumor1',
    'portalvein',
    'skin',
)
"""Mask folders written under ``MASKS_DICOM/`` (kidneys only when requested)."""

KIDNEY_FOLDERS: tuple[str, ...] = ('leftkidney', 'rightkidney')
ARCHIVE_FORMS: tuple[str, ...] = ('zip', 'inner_zips', 'extracted')
FIELD_OF_VIEW_MM = 380.0
HU_MIN, HU_MAX = -1024, 3071
RESCALE_INTERCEPT = -1024

PathLike = Union[str, 'os.PathLike[str]']
KidneySpec = Union[bool, Collection[int]]

_ARCHIVE_TOP = '3Dircadb1'
_ZIP_DATE = (2010, 1, 1, 0, 0, 0)
_UID_ROOT = 'fcn-jax/ircad-phantom'


@dataclasses.dataclass(frozen=True)
class Volume:
    """One phantom patient.

    Attributes:
        hu: int16 [Z, H, W] Hounsfield units, slice 0 is the most inferior.
        masks: organ folder name -> bool [Z, H, W], for every ORGAN_FOLDERS entry.
        pixel_spacing: in-plane pixel size in mm (rows and columns).
        slice_thickness: slice thickness and spacing in mm.
    """

    hu: np.ndarray
    masks: dict[str, np.ndarray]
    pixel_spacing: float
    slice_thickness: float


# --------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f'{name} must be an integer, got {value!r}')
    if value < minimum:
        raise ValueError(f'{name} must be >= {minimum}, got {value}')
    return int(value)


def _check_volume_args(
    patient_id: int, num_slices: int, size: int, seed: int, slice_thickness: float
) -> tuple[int, int, int, int, float]:
    patient_id = _check_int('patient_id', patient_id, 0)
    num_slices = _check_int('num_slices', num_slices, 1)
    size = _check_int('size', size, 1)
    seed = _check_int('seed', seed, 0)
    try:
        thickness = float(slice_thickness)
    except (TypeError, ValueError):
        raise ValueError(f'slice_thickness must be a number, got {slice_thickness!r}') from None
    if not math.isfinite(thickness) or thickness <= 0:
        raise ValueError(f'slice_thickness must be a positive number, got {slice_thickness!r}')
    return patient_id, num_slices, size, seed, thickness


def _pixel_spacing(size: int) -> float:
    # Rounded so that the value written as a DICOM DS string is exact.
    return float(f'{FIELD_OF_VIEW_MM / size:.10g}')


# --------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------

Window = tuple[slice, slice]


class _Grid:
    """Pixel-centre coordinates in mm; x to the image right, y to the image bottom."""

    def __init__(self, num_slices: int, size: int, spacing: float) -> None:
        self.z = num_slices
        self.size = size
        self.spacing = spacing
        coords = ((np.arange(size, dtype=np.float64) + 0.5) - size / 2) * spacing
        self.x = coords.astype(np.float32)
        self.y = coords.astype(np.float32)
        if num_slices > 1:
            self.t = np.linspace(0.0, 1.0, num_slices)
        else:
            self.t = np.array([0.5])
        self.full: Window = (slice(0, size), slice(0, size))

    def per_slice(self, value: object) -> np.ndarray:
        return np.broadcast_to(np.asarray(value, dtype=np.float64), (self.z,)).copy()

    def window(self, *bounds: tuple[float, float, float, float] | None) -> Window | None:
        """Smallest pixel window covering the given (x0, x1, y0, y1) mm boxes."""
        boxes = [b for b in bounds if b is not None]
        if not boxes:
            return None
        x0 = min(b[0] for b in boxes)
        x1 = max(b[1] for b in boxes)
        y0 = min(b[2] for b in boxes)
        y1 = max(b[3] for b in boxes)
        half = self.size / 2 - 0.5
        j0 = max(int(math.floor(x0 / self.spacing + half)), 0)
        j1 = min(int(math.ceil(x1 / self.spacing + half)) + 1, self.size)
        i0 = max(int(math.floor(y0 / self.spacing + half)), 0)
        i1 = min(int(math.ceil(y1 / self.spacing + half)) + 1, self.size)
        if j1 <= j0 or i1 <= i0:
            return None
        return slice(i0, i1), slice(j0, j1)

    def coords(self, win: Window) -> tuple[np.ndarray, np.ndarray]:
        return self.x[win[1]][None, None, :], self.y[win[0]][None, :, None]


class _Ellipse:
    """Per-slice ellipse with optional rotation and smooth radial harmonics.

    A slice where either radius is <= 0 contains no part of the shape.
    """

    def __init__(
        self,
        grid: _Grid,
        cx: object,
        cy: object,
        rx: object,
        ry: object,
        angle: object = 0.0,
        harmonics: Sequence[tuple[int, float, float]] = (),
    ) -> None:
        self.cx = grid.per_slice(cx)
        self.cy = grid.per_slice(cy)
        self.rx = grid.per_slice(rx)
        self.ry = grid.per_slice(ry)
        self.angle = grid.per_slice(angle)
        self.harmonics = tuple(harmonics)
        self.present = (self.rx > 0) & (self.ry > 0)

    def _scale(self, margin: float) -> np.ndarray:
        """Per-slice rho limit for a shape grown by ``margin`` mm."""
        if margin == 0:
            return np.ones(self.cx.shape)
        mean_r = np.maximum(0.5 * (self.rx + self.ry), 1e-6)
        return 1.0 + margin / mean_r

    def bounds(self, margin: float = 0.0) -> tuple[float, float, float, float] | None:
        """(x0, x1, y0, y1) mm box covering every slice of the shape."""
        p = self.present & (self._scale(margin) > 0)
        if not p.any():
            return None
        amp = 1.0 + sum(abs(a) for _, a, _ in self.harmonics)
        r = np.maximum(self.rx[p], self.ry[p]) * amp * self._scale(margin)[p] + 1e-3
        cx, cy = self.cx[p], self.cy[p]
        return float((cx - r).min()), float((cx + r).max()), float((cy - r).min()), float((cy + r).max())

    def _rho_range(self, x: np.ndarray, y: np.ndarray) -> tuple[int, int, np.ndarray]:
        """Normalised radius on the slice range [z0, z1) that holds the shape."""
        zs = np.flatnonzero(self.present)
        if zs.size == 0:
            return 0, 0, np.empty((0, y.shape[1], x.shape[2]), dtype=np.float32)
        z0, z1 = int(zs[0]), int(zs[-1]) + 1
        sl = slice(z0, z1)

        def col(v: np.ndarray) -> np.ndarray:
            return v[sl].astype(np.float32)[:, None, None]

        rx = col(np.where(self.present, self.rx, 1.0))
        ry = col(np.where(self.present, self.ry, 1.0))
        dx = x - col(self.cx)
        dy = y - col(self.cy)
        if np.any(self.angle[sl] != 0):
            c = col(np.cos(self.angle))
            s = col(np.sin(self.angle))
            u = (dx * c + dy * s) / rx
            v = (dy * c - dx * s) / ry
        else:
            u = dx / rx
            v = dy / ry
        rho = np.sqrt(u * u + v * v)
        if self.harmonics:
            phi = np.arctan2(v, u)
            mod = np.ones_like(phi)
            for k, amp, phase in self.harmonics:
                mod += np.float32(amp) * np.cos(k * phi + np.float32(phase))
            rho = rho / mod
        rho = np.broadcast_to(rho, (z1 - z0, y.shape[1], x.shape[2])).copy()
        rho[~self.present[sl]] = np.inf
        return z0, z1, rho

    def rho(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Normalised radius [Z, h, w]: < 1 inside, inf on slices without the shape."""
        z0, z1, sub = self._rho_range(x, y)
        out = np.full((self.cx.shape[0], y.shape[1], x.shape[2]), np.inf, dtype=np.float32)
        out[z0:z1] = sub
        return out

    def inside(self, x: np.ndarray, y: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Boolean [Z, h, w]; ``margin`` (mm, may be negative) grows the shape."""
        z0, z1, sub = self._rho_range(x, y)
        out = np.zeros((self.cx.shape[0], y.shape[1], x.shape[2]), dtype=bool)
        out[z0:z1] = sub < self._scale(margin)[z0:z1].astype(np.float32)[:, None, None]
        return out


class _Torso:
    """Body outline: a superellipse, flatter posteriorly (patient lying on the table).

    Insets are (lateral, anterior, posterior) mm, scalars or per-slice arrays.
    """

    def __init__(
        self,
        grid: _Grid,
        cx: object,
        cy: object,
        a: object,
        b_ant: object,
        b_post: object,
        power_ant: float,
        power_post: float,
    ) -> None:
        self.g = grid
        self.cx = grid.per_slice(cx)
        self.cy = grid.per_slice(cy)
        self.a = grid.per_slice(a)
        self.b_ant = grid.per_slice(b_ant)
        self.b_post = grid.per_slice(b_post)
        self.power_ant = float(power_ant)
        self.power_post = float(power_post)

    def _axes(self, inset: Sequence[object]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lat, ant, post = (self.g.per_slice(v) for v in inset)
        return (
            np.maximum(self.a - lat, 1e-3),
            np.maximum(self.b_ant - ant, 1e-3),
            np.maximum(self.b_post - post, 1e-3),
        )

    def bounds(self) -> tuple[float, float, float, float]:
        return (
            float((self.cx - self.a).min()),
            float((self.cx + self.a).max()),
            float((self.cy - self.b_ant).min()),
            float((self.cy + self.b_post).max()),
        )

    def inside(self, x: np.ndarray, y: np.ndarray, inset: Sequence[object] = (0.0, 0.0, 0.0)) -> np.ndarray:
        """Boolean [Z, h, w] for the outline shrunk by ``inset``."""
        a, b_ant, b_post = (v.astype(np.float32)[:, None, None] for v in self._axes(inset))
        dx = np.abs(x - self.cx.astype(np.float32)[:, None, None])
        dy = y - self.cy.astype(np.float32)[:, None, None]
        ant = dy < 0
        # The halves in front of and behind the centre have their own exponents.
        ex_ant = (dx / a) ** np.float32(self.power_ant)
        ex_post = (dx / a) ** np.float32(self.power_post)
        ey = np.where(
            ant,
            (np.abs(dy) / b_ant) ** np.float32(self.power_ant),
            (np.abs(dy) / b_post) ** np.float32(self.power_post),
        )
        return np.where(ant, ex_ant, ex_post) + ey < 1

    def point(self, theta: np.ndarray, inset: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
        """Per-slice point on the inset outline at parametric angle theta (0 = image right)."""
        a, b_ant, b_post = self._axes(inset)
        c, s = np.cos(theta), np.sin(theta)
        e = 2.0 / np.where(s < 0, self.power_ant, self.power_post)
        x = self.cx + a * np.sign(c) * np.abs(c) ** e
        y = self.cy + np.where(s < 0, b_ant, b_post) * np.sign(s) * np.abs(s) ** e
        return x, y


def _profile(t: np.ndarray, lo: float, peak: float, hi: float) -> np.ndarray:
    """Ellipsoidal size profile along z: 1 at ``peak``, 0 outside (lo, hi)."""
    width = np.where(t < peak, max(peak - lo, 1e-6), max(hi - peak, 1e-6))
    return np.sqrt(np.clip(1.0 - ((t - peak) / width) ** 2, 0.0, 1.0))


def _drop_small_islands(mask: np.ndarray, min_pixels: float) -> None:
    """Clear, in place, in-plane connected components smaller than ``min_pixels``."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    labels, count = ndimage.label(mask, structure=structure)
    if count == 0:
        return
    sizes = np.bincount(labels.ravel())
    small = sizes < min_pixels
    small[0] = False
    if small.any():
        mask[small[labels]] = False


def _interp_matrix(n_out: int, n_in: int, cell: float, offset: float) -> np.ndarray:
    pos = (np.arange(n_out) + 0.5) / cell + offset
    i0 = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    frac = np.clip(pos - i0, 0.0, 1.0)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    m[rows, i0] = 1.0 - frac
    m[rows, i0 + 1] += frac
    return m


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int, int], cells: tuple[float, float, float]
) -> np.ndarray:
    """Smooth random field (roughly unit variance) with the given correlation cells in pixels."""
    cells = tuple(max(float(c), 1.0) for c in cells)
    coarse_shape = tuple(int(math.ceil(n / c)) + 2 for n, c in zip(shape, cells))
    field = rng.standard_normal(coarse_shape, dtype=np.float32)
    offsets = rng.uniform(0.0, 1.0, size=3)
    for axis, (n, c) in enumerate(zip(shape, cells)):
        m = _interp_matrix(n, field.shape[axis], c, float(offsets[axis]))
        field = np.moveaxis(np.tensordot(m, field, axes=(1, axis)), 0, axis)
    std = float(field.std())
    return field / std if std > 0 else field


# --------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Frame:
    """Geometry shared by most structures of one patient (mm, per slice where arrays)."""

    body: _Torso
    fat: tuple[float, float, float]
    muscle: tuple[float, float, float]
    organ_inset: tuple[float, float, float]
    vb_cx: float
    vb_cy: np.ndarray
    vb_rx: float
    vb_ry: float
    canal_cy: np.ndarray


@dataclasses.dataclass(frozen=True)
class _LiverShape:
    right_lobe: _Ellipse
    left_lobe: _Ellipse
    rx: float
    ry: float
    lo: float
    peak: float
    hi: float


@dataclasses.dataclass(frozen=True)
class _Vessels:
    aorta: _Ellipse
    ivc: _Ellipse
    sma: _Ellipse
    smv: _Ellipse
    portal_hu: float


@dataclasses.dataclass(frozen=True)
class _Kidney:
    name: str
    outer: _Ellipse
    notch: _Ellipse
    sinus: _Ellipse
    medulla: _Ellipse
    shadow: _Ellipse


class _Builder:
    """Paints one phantom patient into a float32 HU volume plus organ masks.

    Background structures are painted first; the labelled organs get their
    masks (bone > kidneys > liver, disjoint) and are painted last, so the HU
    volume and the masks agree.
    """

    def __init__(
        self,
        grid: _Grid,
        slice_thickness: float,
        anatomy_rng: np.random.Generator,
        texture_rng: np.random.Generator,
    ) -> None:
        self.g = grid
        self.thickness = slice_thickness
        self.rng = anatomy_rng
        self.tex = texture_rng
        shape = (grid.z, grid.size, grid.size)
        self.hu = np.full(shape, -1000.0, dtype=np.float32)
        self.masks = {name: np.zeros(shape, dtype=bool) for name in ORGAN_FOLDERS}
        self.space = np.zeros(shape, dtype=bool)  # where abdominal organs may lie

    # -- small utilities -------------------------------------------------

    def u(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def harmonics(self, count: int, amplitude: float) -> tuple[tuple[int, float, float], ...]:
        return tuple(
            (k, self.u(-amplitude, amplitude) / (k - 1) ** 0.5, self.u(0, 2 * math.pi))
            for k in range(2, 2 + count)
        )

    def ellipse(self, *args: object, **kwargs: object) -> _Ellipse:
        return _Ellipse(self.g, *args, **kwargs)

    def disc(self, cx: object, cy: object, r: np.ndarray, on: np.ndarray) -> _Ellipse:
        """A circle of radius ``r`` on the slices where ``on`` is set."""
        r = np.where(on, r, 0.0)
        return self.ellipse(cx, cy, r, r)

    def paint(self, win: Window | None, inside: np.ndarray, value: object) -> None:
        if win is None:
            return
        np.copyto(self.hu[:, win[0], win[1]], np.asarray(value, dtype=np.float32), where=inside)

    def fill(self, shape: _Ellipse, value: float, within: np.ndarray | None = None) -> None:
        """Paint ``shape``, optionally only where the full-size mask ``within`` is set."""
        win = self.g.window(shape.bounds())
        if win is None:
            return
        inside = shape.inside(*self.g.coords(win))
        if within is not None:
            inside &= within[:, win[0], win[1]]
        self.paint(win, inside, value)

    def texture(self, win: Window, cell_mm: float, z_cells: float = 2.0) -> np.ndarray:
        h = win[0].stop - win[0].start
        w = win[1].stop - win[1].start
        cell = cell_mm / self.g.spacing
        return _smooth_noise(self.tex, (self.g.z, h, w), (z_cells, cell, cell))

    def combine(
        self, region: np.ndarray, win: Window, shape: _Ellipse, margin: float = 0.0, add: bool = False
    ) -> None:
        """Add ``shape`` to, or carve it out of, ``region`` (a bool array over ``win``)."""
        sub = self.g.window(shape.bounds(margin))
        if sub is None:
            return
        i0, i1 = max(sub[0].start, win[0].start), min(sub[0].stop, win[0].stop)
        j0, j1 = max(sub[1].start, win[1].start), min(sub[1].stop, win[1].stop)
        if i1 <= i0 or j1 <= j0:
            return
        inside = shape.inside(*self.g.coords((slice(i0, i1), slice(j0, j1))), margin)
        local = region[:, i0 - win[0].start : i1 - win[0].start, j0 - win[1].start : j1 - win[1].start]
        if add:
            local |= inside
        else:
            local &= ~inside

    def shape_mask(self, win: Window, *shapes: _Ellipse, margin: float = 0.0) -> np.ndarray:
        """Union of ``shapes`` over ``win``."""
        region = np.zeros((self.g.z, win[0].stop - win[0].start, win[1].stop - win[1].start), dtype=bool)
        for shape in shapes:
            self.combine(region, win, shape, margin, add=True)
        return region

    def wall_point(
        self, frame: _Frame, theta: np.ndarray, inset: tuple[float, float, float], side: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point on an inset body outline and the outline's direction there (radians)."""
        px, py = frame.body.point(theta, inset)
        qx, qy = frame.body.point(theta + 0.01 * side, inset)
        return px, py, np.arctan2(qy - py, qx - px)

    # -- build -------------------------------------------------------------

    def build(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        frame = self._frame()
        self._body_wall(frame)
        muscles = self._back_muscles(frame)
        self._bowel(frame)
        liver = self._liver_shape()
        avoid = self._upper_organs(frame, liver)
        vessels = self._vessels(frame)
        kidneys = self._kidney_shapes(frame)
        spine = self._spine(frame)
        ribs = self._ribs(frame)

        bone_win = self._bone_mask(spine, ribs)
        self._kidney_masks(kidneys, muscles)
        spine_envelope = self.ellipse(
            frame.vb_cx, (frame.vb_cy + frame.canal_cy) / 2, frame.vb_rx + 14.0, frame.vb_ry + 24.0
        )
        avoid += [(vessels.aorta, 5.0), (vessels.ivc, 0.0), (vessels.smv, 2.0), (vessels.sma, 3.0)]
        avoid += [(m, 3.0) for m in muscles] + [(spine_envelope, 0.0)]
        avoid += [(k.outer, 5.0) for k in kidneys] + [(k.shadow, 0.0) for k in kidneys]
        liver_win = self._liver_mask(liver, avoid)
        if liver_win is not None:
            self._liver_contents(liver_win, liver, vessels.ivc, vessels.portal_hu)
        self._paint_kidneys(kidneys)
        self._paint_bone(bone_win, spine, ribs)

        skin = self.masks['skin']
        for name in ORGAN_FOLDERS:
            if name != 'skin':
                self.masks[name] &= skin
        for name in ('livertumor1', 'portalvein'):
            self.masks[name] &= self.masks['liver']
        return self.hu, self.masks

    # -- background --------------------------------------------------------

    def _frame(self) -> _Frame:
        t = self.g.t
        b_post = self.u(100, 110)
        body_cy = self.u(-4, 4)
        body = _Torso(
            self.g,
            cx=self.u(-3, 3),
            cy=body_cy,
            a=self.u(128, 148) * (1.0 + 0.04 * (0.5 - t)),
            b_ant=self.u(112, 122) * (1.0 + 0.03 * (0.5 - t)),
            b_post=b_post,
            power_ant=self.u(2.0, 2.4),
            power_post=self.u(2.5, 3.0),
        )
        fat = (self.u(14, 28), self.u(12, 24), self.u(12, 20))
        muscle = (self.u(11, 15), self.u(9, 12), self.u(3, 5))
        vb_ry = self.u(15, 18)
        vb_cy = body_cy + b_post - self.u(74, 82) + 5.0 * (t - 0.5)
        return _Frame(
            body=body,
            fat=fat,
            muscle=muscle,
            organ_inset=tuple(f + m + 2.0 for f, m in zip(fat, muscle)),
            vb_cx=self.u(-2, 2),
            vb_cy=vb_cy,
            vb_rx=self.u(20, 24),
            vb_ry=vb_ry,
            canal_cy=vb_cy + vb_ry + self.u(7, 9),
        )

    def _body_wall(self, frame: _Frame) -> None:
        """Table, subcutaneous fat, muscle wall and the fat of the abdominal cavity."""
        g, body = self.g, frame.body
        self.fat_hu, self.muscle_hu = self.u(-110, -90), self.u(45, 60)
        x, y = g.coords(g.full)
        body_in = body.inside(x, y)
        self.masks['skin'][:] = body_in
        self.space[:] = body.inside(x, y, frame.organ_inset)
        self._table(body, body_in)
        self.paint(g.full, body_in, self.fat_hu)
        del body_in
        self.muscle_in = body.inside(x, y, frame.fat)
        self.paint(g.full, self.muscle_in, self.muscle_hu)
        cavity = body.inside(x, y, tuple(f + m for f, m in zip(frame.fat, frame.muscle)))
        wall = self.muscle_in & ~cavity
        # Linea alba in the anterior midline.
        cx, cy = body.cx[:, None, None], body.cy[:, None, None]
        self.paint(g.full, wall & (np.abs(x - cx) < 3.0) & (y < cy), self.fat_hu)
        # A fat plane between the lateral muscle layers.
        mid = tuple(f + 0.45 * m for f, m in zip(frame.fat, frame.muscle))
        a, b_ant, b_post = (float(v.mean()) for v in (body.a, body.b_ant, body.b_post))
        y0, y1 = float(body.cy.mean()) - 0.55 * b_ant, float(body.cy.mean()) + 0.3 * b_post
        for x0, x1 in ((-1.1 * a, -0.6 * a), (0.6 * a, 1.1 * a)):
            win = g.window((x0, x1, y0, y1))
            if win is None:
                continue
            xw, yw = g.coords(win)
            outer = body.inside(xw, yw, tuple(v - 0.9 for v in mid))
            plane = outer & ~body.inside(xw, yw, tuple(v + 0.9 for v in mid))
            self.paint(win, plane & wall[:, win[0], win[1]], self.fat_hu + 20.0)
        del wall
        self.paint(g.full, cavity, self.fat_hu + self.u(-8, 8))

    def _table(self, body: _Torso, body_in: np.ndarray) -> None:
        """A slightly curved CT table under the patient (outside the body)."""
        x, y = self.g.coords(self.g.full)
        y0 = float((body.cy + body.b_post).max()) + self.u(2, 5)
        depth = y - (y0 - self.u(0.0005, 0.001) * x * x)
        in_table = (depth >= 0) & (depth < 24.0) & (np.abs(x) < 170.0) & ~body_in
        self.paint(self.g.full, in_table, -750.0)
        self.paint(self.g.full, in_table & ((depth < 3.5) | (depth >= 20.5)), 250.0)

    def _back_muscles(self, frame: _Frame) -> list[_Ellipse]:
        """Paraspinal muscles (in the back wall) and psoas; returns [para L/R, psoas L/R]."""
        t = self.g.t
        para = [
            self.ellipse(
                frame.vb_cx + side * self.u(26, 32),
                frame.canal_cy + self.u(6, 12),
                self.u(24, 30),
                self.u(20, 25),
                angle=-side * self.u(0.1, 0.3),
            )
            for side in (-1, 1)
        ]
        for muscle in para:
            self.fill(muscle, self.muscle_hu, within=self.muscle_in)
        self.psoas_r = self.u(14, 18) * np.clip((0.85 - t) / 0.6, 0.0, 1.0) ** 0.7
        psoas = [
            self.ellipse(
                frame.vb_cx + side * (frame.vb_rx + 0.8 * self.psoas_r + 2.0),
                frame.vb_cy + 2.0,
                self.psoas_r,
                0.85 * self.psoas_r,
            )
            for side in (-1, 1)
        ]
        for muscle in psoas:
            self.fill(muscle, self.muscle_hu)
        return para + psoas

    def _bowel(self, frame: _Frame) -> None:
        """Bowel loops and colon (fluid, gas, air-fluid levels, stool) and mesenteric vessels."""
        g, t, body = self.g, self.g.t, frame.body
        a = float(body.a.mean()) - frame.organ_inset[0]
        top = float(body.cy.mean() - body.b_ant.mean()) + frame.organ_inset[1]
        bottom = float(frame.vb_cy.mean()) - frame.vb_ry - 8.0
        loops: list[tuple[_Ellipse, str]] = []
        for _ in range(34):
            tc, half = self.u(-0.15, 0.85), self.u(0.12, 0.35)
            r, elong = self.u(9, 17), self.u(1.0, 1.6)
            x0, y0 = self.u(-0.8, 0.8) * a, self.u(top + 15, bottom)
            vx, vy = self.u(-40, 40), self.u(-25, 25)
            on = np.abs(t - tc) < half
            kind = str(self.rng.choice(['fluid', 'fluid', 'fluid', 'gas', 'airfluid', 'stool']))
            shape = self.ellipse(
                x0 + vx * (t - tc),
                y0 + vy * (t - tc),
                np.where(on, r * elong, 0.0),
                np.where(on, r, 0.0),
                angle=self.u(0, math.pi),
            )
            loops.append((shape, kind))
        # Colon: ascending (patient right = image left), descending, transverse.
        r = self.u(16, 22)
        on = t < self.u(0.3, 0.45)
        ascending = self.ellipse(-a + r + 6, self.u(-20, 10), np.where(on, r, 0), np.where(on, 0.9 * r, 0))
        loops.append((ascending, 'stool'))
        on = t < self.u(0.7, 0.85)
        loops.append((self.disc(a - r - 4, self.u(-5, 20), 0.8 * r, on), 'stool'))
        on = np.abs(t - self.u(0.38, 0.52)) < 0.05
        transverse = self.ellipse(
            self.u(-10, 10),
            top + r + 4,
            np.where(on, self.u(60, 80), 0),
            np.where(on, 0.8 * r, 0),
            harmonics=self.harmonics(3, 0.08),
        )
        loops.append((transverse, 'gas'))

        wall_hu, fluid_hu = self.u(55, 80), self.u(10, 35)
        for shape, kind in loops:
            win = g.window(shape.bounds())
            if win is None:
                continue
            xw, yw = g.coords(win)
            rho = shape.rho(xw, yw)
            inside = (rho < 1) & self.space[:, win[0], win[1]]
            if not inside.any():
                continue
            wall = (2.5 / np.maximum(shape.ry, 1.0)).astype(np.float32)[:, None, None]
            lumen = inside & (rho < 1 - wall)
            self.paint(win, inside, wall_hu)
            if kind == 'fluid':
                self.paint(win, lumen, fluid_hu)
            elif kind == 'gas':
                self.paint(win, lumen, -900.0)
            elif kind == 'airfluid':
                level = (shape.cy - self.u(0.1, 0.5) * shape.ry).astype(np.float32)[:, None, None]
                self.paint(win, lumen, fluid_hu)
                self.paint(win, lumen & (yw < level), -900.0)
            else:
                tex = self.texture(win, 4.0, 1.5)
                self.paint(win, lumen, np.where(tex > 0.55, -850.0, -70.0 + 60.0 * tex).astype(np.float32))

        for _ in range(10):
            tc = self.u(0.0, 0.7)
            vessel = self.disc(
                self.u(-0.5, 0.5) * a + self.u(-20, 20) * (t - tc),
                self.u(top + 25, bottom),
                self.u(1.8, 3.0),
                np.abs(t - tc) < self.u(0.1, 0.3),
            )
            self.fill(vessel, self.u(120, 160), within=self.space)

    def _liver_shape(self) -> _LiverShape:
        """Right and left lobes: absent low down, largest in the upper middle."""
        t = self.g.t
        lo, peak, hi = self.u(0.25, 0.36), self.u(0.62, 0.74), self.u(1.06, 1.16)
        f = _profile(t, lo, peak, hi)
        rx, ry = self.u(72, 88), self.u(78, 92)
        right = self.ellipse(
            -self.u(48, 60) - 22.0 * (1.0 - f),
            self.u(-14, -2) - 12.0 * (1.0 - f),
            rx * f**0.6,
            ry * f**0.6,
            angle=self.u(-0.3, 0.3),
            harmonics=self.harmonics(3, 0.08),
        )
        left_lo = peak - self.u(0.08, 0.2)
        fl = _profile(t, left_lo, (left_lo + hi) / 2, hi)
        left = self.ellipse(
            self.u(5, 22) + 10.0 * fl,
            -self.u(48, 62),
            self.u(45, 62) * fl**0.7,
            self.u(18, 26) * fl**0.7,
            angle=self.u(0.1, 0.35),
            harmonics=self.harmonics(2, 0.06),
        )
        return _LiverShape(right, left, rx, ry, lo, peak, hi)

    def _upper_organs(self, frame: _Frame, liver: _LiverShape) -> list[tuple[_Ellipse, float]]:
        """Spleen, stomach, pancreas, lung bases and gallbladder; returns what the liver avoids."""
        t = self.g.t
        lo = self.u(0.48, 0.6)
        f = _profile(t, lo, (lo + 1.1) / 2, 1.15) ** 0.6
        spleen = self.ellipse(
            self.u(78, 92),
            self.u(12, 30),
            self.u(48, 60) * f,
            self.u(20, 28) * f,
            angle=-self.u(0.9, 1.2),
            harmonics=self.harmonics(2, 0.06),
        )
        self.fill(spleen, self.u(105, 125), within=self.space)

        lo = self.u(0.55, 0.68)
        f = _profile(t, lo, (lo + 1.1) / 2, 1.15) ** 0.6
        stomach = self.ellipse(
            self.u(38, 55),
            -self.u(25, 42),
            self.u(36, 50) * f,
            self.u(26, 34) * f,
            angle=self.u(-0.4, 0.1),
            harmonics=self.harmonics(2, 0.05),
        )
        self._stomach(stomach)

        lo = self.u(0.42, 0.55)
        f = _profile(t, lo, lo + 0.1, lo + 0.22)
        pancreas = self.ellipse(
            frame.vb_cx + self.u(20, 32),
            frame.vb_cy - frame.vb_ry - self.u(30, 38),
            self.u(42, 55) * f,
            self.u(8, 12) * f,
            angle=self.u(0.25, 0.5),
            harmonics=self.harmonics(3, 0.08),
        )
        self.fill(pancreas, self.u(85, 105), within=self.space)

        # Lung bases in the posterior costophrenic recesses near the top.
        lo = self.u(0.84, 0.94)
        r = self.u(40, 55) * np.clip((t - lo) / (1.12 - lo), 0.0, 1.0) ** 0.6
        lung_hu = self.u(-870, -830)
        lungs = []
        for side in (-1, 1):
            theta = math.radians(self.u(48, 62))
            theta = np.full(self.g.z, theta if side == 1 else math.pi - theta)
            px, py, angle = self.wall_point(frame, theta, frame.organ_inset, 1)
            lungs.append(self.ellipse(px, py, r, 0.45 * r, angle=angle))
            self.fill(lungs[-1], lung_hu, within=self.space)

        present = self.rng.uniform() < 0.85
        lo = liver.lo + self.u(0.0, 0.05)
        f = _profile(t, lo, lo + 0.08, lo + self.u(0.15, 0.25)) ** 0.5 if present else np.zeros_like(t)
        gallbladder = self.ellipse(
            -self.u(22, 34), -self.u(40, 55), self.u(11, 15) * f, self.u(16, 22) * f, angle=self.u(-0.6, 0.6)
        )
        self.fill(gallbladder, self.u(0, 15))
        avoid = [(spleen, 4.0), (stomach, 3.0), (pancreas, 3.0), (gallbladder, 1.0)]
        return avoid + [(lung, 3.0) for lung in lungs]

    def _stomach(self, stomach: _Ellipse) -> None:
        """Stomach wall, fluid and an anterior gas cap (air-fluid level)."""
        win = self.g.window(stomach.bounds())
        if win is None:
            return
        xw, yw = self.g.coords(win)
        rho = stomach.rho(xw, yw)
        inside = (rho < 1) & self.space[:, win[0], win[1]]
        wall = (4.0 / np.maximum(stomach.ry, 1.0)).astype(np.float32)[:, None, None]
        lumen = inside & (rho < 1 - wall)
        self.paint(win, inside, self.u(55, 75))
        self.paint(win, lumen, self.u(5, 25))
        level = (stomach.cy - self.u(0.1, 0.5) * stomach.ry).astype(np.float32)[:, None, None]
        self.paint(win, lumen & (yw < level), -950.0)

    def _vessels(self, frame: _Frame) -> _Vessels:
        """Aorta, IVC, superior mesenteric artery and vein."""
        t = self.g.t
        front = frame.vb_cy - frame.vb_ry
        aorta = self.disc(frame.vb_cx + self.u(10, 16), front - self.u(11, 14), self.u(10, 12), True)
        ivc = self.ellipse(
            frame.vb_cx - self.u(20, 27),
            front - self.u(9, 13),
            self.u(11, 14),
            self.u(8, 10),
            angle=self.u(-0.3, 0.3),
        )
        on = (t > self.u(0.25, 0.35)) & (t < self.u(0.55, 0.65))
        sma = self.disc(aorta.cx, aorta.cy - self.u(16, 22), 4.0, on)
        smv = self.disc(sma.cx - self.u(10, 14), sma.cy, 5.5, on)
        aorta_hu, portal_hu = self.u(150, 180), self.u(150, 175)
        self.fill(aorta, aorta_hu)
        self.fill(sma, aorta_hu)
        self.fill(smv, portal_hu - 10.0)
        self.fill(ivc, self.u(110, 140))
        return _Vessels(aorta, ivc, sma, smv, portal_hu)

    # -- labelled organs -----------------------------------------------------

    def _kidney_shapes(self, frame: _Frame) -> list[_Kidney]:
        """Bean-shaped kidneys lateral to the psoas, hilum facing antero-medially."""
        t = self.g.t
        tc0, width = self.u(0.26, 0.36), self.u(0.22, 0.28)
        kidneys = []
        for name, side, shift in (('leftkidney', 1, 0.0), ('rightkidney', -1, -self.u(0.02, 0.06))):
            tc = tc0 + shift
            f = _profile(t, tc - width, tc, tc + width)
            g6 = f**0.6
            long, short = self.u(26, 32), self.u(18, 22)
            kx = frame.vb_cx + side * (frame.vb_rx + 2.0 * self.psoas_r + 0.8 * short + self.u(6, 12))
            ky = frame.vb_cy - self.u(0, 8)
            angle = -side * math.radians(self.u(45, 62))
            hx, hy = -side / math.sqrt(2.0), -1.0 / math.sqrt(2.0)
            fh = np.clip(1.0 - np.abs(t - tc) / (0.55 * width), 0.0, 1.0) ** 0.5
            kidneys.append(
                _Kidney(
                    name=name,
                    outer=self.ellipse(
                        kx, ky, long * g6, short * g6, angle=angle, harmonics=self.harmonics(2, 0.04)
                    ),
                    notch=self.ellipse(
                        kx + hx * short * 0.95 * f,
                        ky + hy * short * 0.95 * f,
                        0.45 * short * fh,
                        0.5 * short * fh,
                    ),
                    sinus=self.ellipse(
                        kx + hx * short * 0.35 * f,
                        ky + hy * short * 0.35 * f,
                        0.5 * long * fh * f,
                        0.28 * short * fh * f,
                        angle=angle,
                    ),
                    medulla=self.ellipse(kx, ky, 0.62 * long * g6, 0.55 * short * g6, angle=angle),
                    # The liver stays anterior to the retroperitoneal kidney, poles included.
                    shadow=self.ellipse(kx, ky + 0.8 * long, np.where(f > 0, 1.1 * long, 0.0), 0.9 * long),
                )
            )
        return kidneys

    def _spine(self, frame: _Frame) -> dict[str, _Ellipse]:
        """Vertebral body (or disc), canal, neural arch, spinous and transverse processes."""
        cx, cy, canal_cy = frame.vb_cx, frame.vb_cy, frame.canal_cy
        period, disc_len = self.u(34, 40), self.u(7, 10)
        # Vertebral levels are fixed in mm so that discs recur every ~37 mm.
        level = np.mod(np.arange(self.g.z) * self.thickness + self.u(0, period), period)
        disc = level < disc_len
        mid = np.abs(level - (disc_len + period) / 2) < (period - disc_len) * 0.3
        rx, ry = frame.vb_rx, frame.vb_ry
        tp_rx, tp_ry = np.where(mid, self.u(9, 12), 0.0), np.where(mid, self.u(3.5, 5), 0.0)
        tp_x, tp_y = self.u(22, 26), canal_cy - self.u(3, 6)
        return {
            'body': self.ellipse(cx, cy, np.where(disc, 0.0, rx), np.where(disc, 0.0, ry)),
            'disc': self.ellipse(cx, cy, np.where(disc, rx + 1.5, 0.0), np.where(disc, ry + 1.0, 0.0)),
            'canal': self.ellipse(cx, canal_cy, self.u(8.5, 10.5), self.u(7, 8.5)),
            'arch': self.ellipse(cx, canal_cy + 1.0, self.u(15, 17), self.u(13, 15)),
            'spinous': self.ellipse(cx, canal_cy + self.u(20, 24), self.u(3.5, 4.5), self.u(10, 13)),
            'transverse_r': self.ellipse(cx - tp_x, tp_y, tp_rx, tp_ry, angle=0.2),
            'transverse_l': self.ellipse(cx + tp_x, tp_y, tp_rx, tp_ry, angle=-0.2),
        }

    def _ribs(self, frame: _Frame) -> list[_Ellipse]:
        """Rib cross-sections in the muscle wall, more of them higher up."""
        t = self.g.t
        inset = tuple(f + m / 2 for f, m in zip(frame.fat, frame.muscle))
        ribs = []
        for side in (-1, 1):
            for _ in range(8):
                deg = self.u(-75, 78)
                start = float(np.clip(0.55 - 0.0045 * deg + self.rng.normal(0.0, 0.08), 0.08, 0.95))
                theta = np.radians(deg) + self.u(-0.5, 0.5) * (t - start)
                theta = theta if side == 1 else math.pi - theta
                px, py, angle = self.wall_point(frame, theta, inset, side)
                on = t >= start
                length, thick = np.where(on, self.u(6, 9), 0.0), np.where(on, self.u(3.5, 4.5), 0.0)
                ribs.append(self.ellipse(px, py, length, thick, angle=angle))
        return ribs

    def _bone_mask(self, spine: dict[str, _Ellipse], ribs: list[_Ellipse]) -> Window | None:
        g = self.g
        win = g.window(*(s.bounds() for s in spine.values()), *(r.bounds() for r in ribs))
        if win is None:
            return None
        bones = [s for name, s in spine.items() if name not in ('canal', 'disc')] + ribs
        bone = self.shape_mask(win, *bones)
        self.combine(bone, win, spine['canal'])
        self.combine(bone, win, spine['disc'])
        self.masks['bone'][:, win[0], win[1]] = bone & self.masks['skin'][:, win[0], win[1]]
        return win

    def _kidney_masks(self, kidneys: list[_Kidney], muscles: list[_Ellipse]) -> None:
        for kidney in kidneys:
            win = self.g.window(kidney.outer.bounds())
            if win is None:
                continue
            inside = kidney.outer.inside(*self.g.coords(win)) & self.space[:, win[0], win[1]]
            self.combine(inside, win, kidney.notch)
            for muscle in muscles:
                self.combine(inside, win, muscle, 1.0)
            inside &= ~self.masks['bone'][:, win[0], win[1]]
            self.masks[kidney.name][:, win[0], win[1]] = inside

    def _liver_mask(self, liver: _LiverShape, avoid: list[tuple[_Ellipse, float]]) -> Window | None:
        win = self.g.window(liver.right_lobe.bounds(), liver.left_lobe.bounds())
        if win is None:
            return None
        mask = self.shape_mask(win, liver.right_lobe, liver.left_lobe)
        mask &= self.space[:, win[0], win[1]]
        for shape, margin in avoid:
            self.combine(mask, win, shape, margin)
        for name in ('bone', 'leftkidney', 'rightkidney'):
            mask &= ~self.masks[name][:, win[0], win[1]]
        _drop_small_islands(mask, 150.0 / self.g.spacing**2)
        self.masks['liver'][:, win[0], win[1]] = mask
        return win

    def _liver_contents(self, win: Window, liver: _LiverShape, ivc: _Ellipse, portal_hu: float) -> None:
        """Paint liver parenchyma, tumour, portal-vein and hepatic-vein branches."""
        t = self.g.t
        mask = self.masks['liver'][:, win[0], win[1]]
        liver_hu = self.u(90, 110)
        self.paint(win, mask, liver_hu + 5.0 * self.texture(win, 10.0))
        lobe = liver.right_lobe

        # Tumour: a roughly spherical lesion around the liver's widest level.
        i_peak = int(np.argmin(np.abs(t - liver.peak)))
        tc, half, r = liver.peak + self.u(-0.1, 0.12), self.u(0.07, 0.13), self.u(12, 22)
        f = _profile(t, tc - half, tc, tc + half)
        tumour = self.ellipse(
            lobe.cx[i_peak] + self.u(-0.3, 0.3) * liver.rx,
            lobe.cy[i_peak] + self.u(-0.3, 0.3) * liver.ry,
            r * f,
            r * f * self.u(0.85, 1.1),
            harmonics=self.harmonics(2, 0.06),
        )
        tum = self.shape_mask(win, tumour) & mask
        rim = self.shape_mask(win, tumour, margin=2.5) & mask & ~tum
        self.masks['livertumor1'][:, win[0], win[1]] = tum
        self.paint(win, tum, liver_hu - self.u(36, 46))
        self.paint(win, rim, liver_hu - self.u(8, 15))

        # Portal vein: a trunk entering at the hilum plus branches running up and out.
        tp = liver.peak - self.u(0.02, 0.1)
        i_p = int(np.argmin(np.abs(t - tp)))
        hx = lobe.cx[i_p] + 0.45 * liver.rx
        hy = lobe.cy[i_p] + self.u(0.0, 0.2) * liver.ry
        on = np.abs(t - tp) < 0.045
        branches = [
            self.ellipse(
                hx - 14.0,
                hy,
                np.where(on, self.u(18, 26), 0.0),
                np.where(on, self.u(5, 6.5), 0.0),
                angle=self.u(-0.4, 0.4),
            )
        ]
        for _ in range(4):
            length = self.u(0.15, 0.3)
            s = np.clip((t - tp) / length, 0.0, 1.0)
            tx, ty = hx + self.u(-0.9, -0.2) * liver.rx, hy + self.u(-0.6, 0.5) * liver.ry
            r = self.u(4.5, 6.0) * (1.0 - 0.45 * s)
            on = (t >= tp - 0.02) & (t <= tp + length)
            branches.append(self.disc(hx + (tx - hx) * s, hy + (ty - hy) * s, r, on))
        vein = self.shape_mask(win, *branches) & mask & ~tum & ~rim
        self.masks['portalvein'][:, win[0], win[1]] = vein
        self.paint(win, vein, portal_hu)

        # Hepatic veins (part of the liver label) converging on the IVC near the dome.
        lo = self.u(0.78, 0.9)
        s = np.clip((t - lo) / (liver.hi - 0.05 - lo), 0.0, 1.0)
        for _ in range(3):
            sx, sy = ivc.cx + self.u(-80, 50), ivc.cy + self.u(-70, -20)
            r = self.u(3.5, 5.5) * (0.7 + 0.5 * s)
            hepatic = self.disc(sx + (ivc.cx - sx) * s, sy + (ivc.cy - sy) * s, r, t >= lo)
            self.paint(win, self.shape_mask(win, hepatic) & mask & ~tum & ~vein, portal_hu - self.u(5, 20))

    def _paint_kidneys(self, kidneys: list[_Kidney]) -> None:
        for kidney in kidneys:
            win = self.g.window(kidney.outer.bounds())
            if win is None:
                continue
            xw, yw = self.g.coords(win)
            mask = self.masks[kidney.name][:, win[0], win[1]]
            self.paint(win, mask, self.u(160, 190))
            self.paint(win, mask & kidney.medulla.inside(xw, yw), self.u(115, 140))
            self.paint(win, mask & kidney.sinus.inside(xw, yw), self.u(-80, -40))

    def _paint_bone(self, win: Window | None, spine: dict[str, _Ellipse], ribs: list[_Ellipse]) -> None:
        """Cortical bone, cancellous interiors, disc and spinal canal."""
        if win is None:
            return
        bone = self.masks['bone'][:, win[0], win[1]]
        self.paint(win, bone, self.u(750, 1000))
        cancellous_hu = self.u(150, 220)
        self.paint(win, bone & self.shape_mask(win, *ribs, margin=-1.6), cancellous_hu)
        spine_win = self.g.window(spine['body'].bounds(), spine['disc'].bounds(), spine['canal'].bounds())
        if spine_win is None:
            return
        xw, yw = self.g.coords(spine_win)
        bone = self.masks['bone'][:, spine_win[0], spine_win[1]]
        marrow = spine['body'].inside(xw, yw, -2.5) & bone
        self.paint(spine_win, marrow, cancellous_hu + 25.0 * self.texture(spine_win, 4.0, 1.0))
        self.paint(spine_win, spine['disc'].inside(xw, yw) & ~bone, self.u(75, 100))
        self.paint(spine_win, spine['canal'].inside(xw, yw) & ~bone, self.u(5, 20))


def make_volume(
    patient_id: int,
    *,
    num_slices: int = 40,
    size: int = 256,
    seed: int = 0,
    slice_thickness: float = 2.5,
) -> Volume:
    """Build one phantom patient in memory.

    Args:
        patient_id: non-negative patient number; anatomy varies with it.
        num_slices: number of axial slices (slice 0 is the most inferior).
        size: rows and columns per slice; pixel spacing is 380 mm / size.
        seed: non-negative extra seed; same (patient_id, seed, sizes) -> same volume.
        slice_thickness: slice thickness and spacing in mm.

    Returns:
        A Volume with int16 HU in [-1024, 3071] and boolean masks for every
        ORGAN_FOLDERS entry (kidney masks are always computed).
    """
    patient_id, num_slices, size, seed, thickness = _check_volume_args(
        patient_id, num_slices, size, seed, slice_thickness
    )
    spacing = _pixel_spacing(size)
    grid = _Grid(num_slices, size, spacing)
    anatomy_ss, texture_ss, noise_ss = np.random.SeedSequence([seed, patient_id, 0x1CAD]).spawn(3)
    builder = _Builder(grid, thickness, np.random.default_rng(anatomy_ss), np.random.default_rng(texture_ss))
    hu, masks = builder.build()

    # Correlated CT noise plus a little blur (partial-volume edges).
    noise_rng = np.random.default_rng(noise_ss)
    noise_sd = float(noise_rng.uniform(12.0, 18.0))
    sigma = 0.6
    kernel = np.exp(-0.5 * (np.arange(-2, 3) / sigma) ** 2)
    kernel /= kernel.sum()
    gain = float(np.sqrt(np.sum(kernel**2)))  # 1D noise gain; 2D gain is its square
    noise = noise_rng.standard_normal(hu.shape, dtype=np.float32)
    noise *= np.float32(noise_sd / (gain * gain))
    hu += noise
    del noise
    for axis in (1, 2):
        ndimage.correlate1d(hu, kernel.astype(np.float32), axis=axis, output=hu, mode='nearest')
    np.rint(hu, out=hu)
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    return Volume(
        hu=hu.astype(np.int16),
        masks=masks,
        pixel_spacing=spacing,
        slice_thickness=thickness,
    )


# --------------------------------------------------------------------------
# DICOM writing
# --------------------------------------------------------------------------


def _ds_str(value: float) -> str:
    text = f'{value:.10g}'
    return '0' if text == '-0' else text


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[_UID_ROOT, *(str(p) for p in parts)])


@dataclasses.dataclass(frozen=True)
class _PatientInfo:
    patient_id: int
    seed: int
    num_slices: int
    size: int
    thickness: float

    @property
    def key(self) -> str:
        return f'{self.patient_id}/{self.seed}/{self.num_slices}/{self.size}/{self.thickness!r}'


def _slice_dataset(
    info: _PatientInfo,
    volume: Volume,
    index: int,
    series: str,
    series_number: int,
    pixels: np.ndarray,
) -> Dataset:
    """One slice as a CT Image Storage dataset; ``series`` is "PATIENT_DICOM" or an organ."""
    is_ct = series == 'PATIENT_DICOM'
    sop_uid = _uid(info.key, series, index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b'\x00' * 128
    ds.SpecificCharacterSet = 'ISO_IR 100'
    ds.ImageType = ['ORIGINAL', 'PRIMARY', 'AXIAL'] if is_ct else ['DERIVED', 'SECONDARY', 'AXIAL']
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = '20100101'
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = '120000'
    ds.AccessionNumber = ''
    ds.Modality = 'CT'
    ds.Manufacturer = 'fcn-jax phantom'
    ds.ReferringPhysicianName = ''
    ds.StudyDescription = '3D-IRCADb-01 phantom'
    ds.SeriesDescription = series
    ds.PatientName = f'phantom_{info.patient_id}^patient'
    ds.PatientID = f'phantom-{info.patient_id}'
    ds.PatientBirthDate = ''
    ds.PatientSex = 'O'
    ds.BodyPartExamined = 'ABDOMEN'
    ds.SliceThickness = _ds_str(volume.slice_thickness)
    if is_ct:
        ds.KVP = '120'
    ds.SpacingBetweenSlices = _ds_str(volume.slice_thickness)
    ds.PatientPosition = 'HFS'
    ds.StudyInstanceUID = _uid(info.key, 'study')
    ds.SeriesInstanceUID = _uid(info.key, 'series', series)
    ds.StudyID = '1'
    ds.SeriesNumber = series_number
    ds.InstanceNumber = index
    z = _ds_str(index * volume.slice_thickness)
    ds.ImagePositionPatient = ['0', '0', z]
    ds.ImageOrientationPatient = ['1', '0', '0', '0', '1', '0']
    ds.FrameOfReferenceUID = _uid(info.key, 'frame')
    ds.PositionReferenceIndicator = ''
    ds.SliceLocation = z
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = 'MONOCHROME2'
    ds.Rows, ds.Columns = pixels.shape
    spacing = _ds_str(volume.pixel_spacing)
    ds.PixelSpacing = [spacing, spacing]
    if is_ct:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.WindowCenter, ds.WindowWidth = '40', '400'
        ds.RescaleIntercept = str(RESCALE_INTERCEPT)
        ds.RescaleSlope = '1'
        ds.RescaleType = 'HU'
        data = pixels.astype('<u2').tobytes()
        vr = 'OW'
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = '0'
        ds.RescaleSlope = '1'
        data = pixels.astype(np.uint8).tobytes()
        vr = 'OB'
    if len(data) % 2:
        data += b'\x00'
    ds.add_new(0x7FE00010, vr, data)
    return ds


def _dicom_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _has_kidneys(kidneys: KidneySpec, patient_id: int) -> bool:
    if isinstance(kidneys, (bool, np.bool_)):
        return bool(kidneys)
    if isinstance(kidneys, (str, bytes)) or not isinstance(kidneys, Iterable):
        raise ValueError(f'kidneys must be a bool or a collection of patient ids, got {kidneys!r}')
    return patient_id in {int(k) for k in kidneys}


def _mask_folders(with_kidneys: bool) -> tuple[str, ...]:
    return tuple(o for o in ORGAN_FOLDERS if with_kidneys or o not in KIDNEY_FOLDERS)


def _ct_files(info: _PatientInfo, volume: Volume) -> Iterator[tuple[str, bytes]]:
    stored = (volume.hu.astype(np.int32) - RESCALE_INTERCEPT).astype(np.uint16)
    for k in range(stored.shape[0]):
        ds = _slice_dataset(info, volume, k, 'PATIENT_DICOM', 1, stored[k])
        yield f'PATIENT_DICOM/image_{k}', _dicom_bytes(ds)


def _mask_files(info: _PatientInfo, volume: Volume, organs: Sequence[str]) -> Iterator[tuple[str, bytes]]:
    for number, organ in enumerate(organs, start=2):
        mask = volume.masks[organ]
        for k in range(mask.shape[0]):
            pixels = mask[k].astype(np.uint8) * np.uint8(255)
            ds = _slice_dataset(info, volume, k, organ, number, pixels)
            yield f'MASKS_DICOM/{organ}/image_{k}', _dicom_bytes(ds)


def _zip_dir(zf: zipfile.ZipFile, name: str) -> None:
    info = zipfile.ZipInfo(name.rstrip('/') + '/', date_time=_ZIP_DATE)
    info.external_attr = (0o40755 << 16) | 0x10
    zf.writestr(info, b'')


def _zip_file(zf: zipfile.ZipFile, name: str, data: bytes, compress_type: int) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.external_attr = 0o644 << 16
    info.compress_type = compress_type
    zf.writestr(info, data)


def _write_inner_zip(target: BinaryIO | pathlib.Path, files: Iterable[tuple[str, bytes]]) -> None:
    """Write an inner IRCAD zip (deflated), with a directory entry before each folder's files."""
    with zipfile.ZipFile(target, 'w', compression=zipfile.ZIP_DEFLATED) as zf:
        seen: set[str] = set()
        for name, data in files:
            parts = name.split('/')[:-1]
            for i in range(1, len(parts) + 1):
                folder = '/'.join(parts[:i])
                if folder not in seen:
                    seen.add(folder)
                    _zip_dir(zf, folder)
            _zip_file(zf, name, data, zipfile.ZIP_DEFLATED)


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _replace_dir(tmp: pathlib.Path, final: pathlib.Path) -> None:
    """Move ``tmp`` to ``final``, replacing (then deleting) whatever was there."""
    if final.exists() or final.is_symlink():
        trash = final.with_name(f'.{final.name}.old-{os.getpid()}')
        _remove(trash)
        os.replace(final, trash)
        os.replace(tmp, final)
        _remove(trash)
    else:
        os.replace(tmp, final)


def _make_volume(info: _PatientInfo) -> Volume:
    return make_volume(
        info.patient_id,
        num_slices=info.num_slices,
        size=info.size,
        seed=info.seed,
        slice_thickness=info.thickness,
    )


def _patient_info(
    patient_id: int, num_slices: int, size: int, seed: int, slice_thickness: float
) -> _PatientInfo:
    patient_id, num_slices, size, seed, thickness = _check_volume_args(
        patient_id, num_slices, size, seed, slice_thickness
    )
    return _PatientInfo(patient_id, seed, num_slices, size, thickness)


def write_patient(
    root: PathLike,
    patient_id: int,
    *,
    num_slices: int = 40,
    size: int = 256,
    seed: int = 0,
    slice_thickness: float = 2.5,
    kidneys: KidneySpec = True,
    inner_zips: bool = True,
) -> pathlib.Path:
    """Write ``root/3Dircadb1.<patient_id>/`` for one phantom patient.

    With ``inner_zips`` the folder holds PATIENT_DICOM.zip and MASKS_DICOM.zip
    (deflated); otherwise the extracted PATIENT_DICOM/ and MASKS_DICOM/<organ>/
    folders. ``kidneys`` (bool, or a collection of patient ids that get kidney
    masks) controls whether leftkidney/rightkidney mask folders are written.
    The folder is built under a hidden temporary name and renamed at the end,
    replacing any previous copy. Returns the patient folder.
    """
    info = _patient_info(patient_id, num_slices, size, seed, slice_thickness)
    organs = _mask_folders(_has_kidneys(kidneys, info.patient_id))
    volume = _make_volume(info)
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f'3Dircadb1.{info.patient_id}'
    tmp = root / f'.{final.name}.partial-{os.getpid()}'
    _remove(tmp)
    tmp.mkdir()
    try:
        if inner_zips:
            _write_inner_zip(tmp / 'PATIENT_DICOM.zip', _ct_files(info, volume))
            _write_inner_zip(tmp / 'MASKS_DICOM.zip', _mask_files(info, volume, organs))
        else:
            (tmp / 'MASKS_DICOM').mkdir()
            for organ in organs:
                (tmp / 'MASKS_DICOM' / organ).mkdir()
            (tmp / 'PATIENT_DICOM').mkdir()
            for name, data in (*_ct_files(info, volume), *_mask_files(info, volume, organs)):
                (tmp / name).write_bytes(data)
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def write_archive(
    root: PathLike,
    patient_ids: Iterable[int],
    *,
    form: str = 'zip',
    **patient_kwargs: Any,
) -> pathlib.Path:
    """Write several phantom patients in one of the IRCAD distribution forms.

    Forms:
        "zip": ``root/3Dircadb1.zip`` with members
            ``3Dircadb1/3Dircadb1.N/{PATIENT,MASKS}_DICOM.zip`` (stored).
        "inner_zips": ``root/3Dircadb1/3Dircadb1.N/{PATIENT,MASKS}_DICOM.zip``.
        "extracted": ``root/3Dircadb1/3Dircadb1.N/PATIENT_DICOM/image_k`` and
            ``.../MASKS_DICOM/<organ>/image_k``.

    ``patient_kwargs`` go to write_patient (num_slices, size, seed,
    slice_thickness, kidneys). Returns the zip file or the 3Dircadb1 folder.
    Raises ValueError for bad arguments before anything is written.
    """
    if form not in ARCHIVE_FORMS:
        raise ValueError(f"form must be one of {', '.join(ARCHIVE_FORMS)}; got {form!r}")
    if isinstance(patient_ids, (str, bytes)):
        raise ValueError(f'patient_ids must be a collection of integers, got {patient_ids!r}')
    ids = [_check_int('patient id', p, 0) for p in patient_ids]
    if not ids:
        raise ValueError('patient_ids must not be empty')
    if len(set(ids)) != len(ids):
        raise ValueError(f'patient_ids contains duplicates: {ids}')
    allowed = {'num_slices', 'size', 'seed', 'slice_thickness', 'kidneys'}
    unknown = sorted(set(patient_kwargs) - allowed)
    if unknown:
        raise ValueError(f'unknown patient option(s) {unknown}; allowed: {sorted(allowed)}')
    infos = [
        _patient_info(
            pid,
            num_slices=patient_kwargs.get('num_slices', 40),
            size=patient_kwargs.get('size', 256),
            seed=patient_kwargs.get('seed', 0),
            slice_thickness=patient_kwargs.get('slice_thickness', 2.5),
        )
        for pid in ids
    ]
    kidney_flags = [_has_kidneys(patient_kwargs.get('kidneys', True), pid) for pid in ids]

    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if form != 'zip':
        top = root / _ARCHIVE_TOP
        for info, has_kidneys in zip(infos, kidney_flags):
            write_patient(
                top,
                info.patient_id,
                num_slices=info.num_slices,
                size=info.size,
                seed=info.seed,
                slice_thickness=info.thickness,
                kidneys=has_kidneys,
                inner_zips=form == 'inner_zips',
            )
        return top

    final = root / f'{_ARCHIVE_TOP}.zip'
    tmp = root / f'.{final.name}.partial-{os.getpid()}'
    try:
        with zipfile.ZipFile(tmp, 'w', compression=zipfile.ZIP_STORED) as outer:
            _zip_dir(outer, _ARCHIVE_TOP)
            for info, has_kidneys in zip(infos, kidney_flags):
                volume = _make_volume(info)
                folder = f'{_ARCHIVE_TOP}/3Dircadb1.{info.patient_id}'
                _zip_dir(outer, folder)
                parts = (
                    ('PATIENT_DICOM.zip', _ct_files(info, volume)),
                    ('MASKS_DICOM.zip', _mask_files(info, volume, _mask_folders(has_kidneys))),
                )
                for name, files in parts:
                    buf = io.BytesIO()
                    _write_inner_zip(buf, files)
                    _zip_file(outer, f'{folder}/{name}', buf.getvalue(), zipfile.ZIP_STORED)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _parse_ids(text: str) -> list[int]:
    ids: list[int] = []
    for part in text.split(','):
        part = part.strip()
        if not part:
            continue
        if '-' in part:
            lo, hi = (int(v) for v in part.split('-', 1))
            ids.extend(range(lo, hi + 1))
        else:
            ids.append(int(part))
    return ids


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog='phantom',
        description='Write synthetic abdominal CT patients in the 3D-IRCADb-01 DICOM layout.',
    )
    parser.add_argument('--out', required=True, type=pathlib.Path, help='output folder')
    parser.add_argument('--patients', default='1', help='patient ids, e.g. 1,2,3 or 1-20 (default: 1)')
    parser.add_argument('--slices', type=int, default=40, help='slices per patient (default: 40)')
    parser.add_argument('--size', type=int, default=256, help='rows/columns per slice (default: 256)')
    parser.add_argument('--thickness', type=float, default=2.5, help='slice thickness in mm (default: 2.5)')
    parser.add_argument('--seed', type=int, default=0, help='extra random seed (default: 0)')
    parser.add_argument('--form', choices=ARCHIVE_FORMS, default='zip', help='archive form (default: zip)')
    parser.add_argument('--no-kidneys', action='store_true', help='do not write kidney mask folders')
    args = parser.parse_args(argv)
    try:
        ids = _parse_ids(args.patients)
    except ValueError:
        parser.error(f'--patients: expected ids like 1,2,3 or 1-20, got {args.patients!r}')
    try:
        path = write_archive(
            args.out,
            ids,
            form=args.form,
            num_slices=args.slices,
            size=args.size,
            seed=args.seed,
            slice_thickness=args.thickness,
            kidneys=not args.no_kidneys,
        )
    except ValueError as err:
        parser.error(str(err))
    kidney_note = 'without kidney masks' if args.no_kidneys else 'with kidney masks'
    print(
        f"wrote {path} ({args.form}): patients {','.join(map(str, ids))}, "
        f'{args.slices} slices of {args.size}x{args.size}, {kidney_note}'
    )
    if path.is_file():
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if not name.endswith('/'):
                    print(f'  {name}')
    else:
        for pid in ids:
            print(f"  {path / f'3Dircadb1.{pid}'}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
