"""Per-organ 3-D segmentation metrics on whole volumes, and connected-component cleanup.

Masks are boolean volumes [Z, Y, X] (anything else is read as `!= 0`); `spacing` is the
voxel size (dz, dy, dx) in mm. The definitions follow the liver-segmentation benchmarks
(SLIVER07, LiTS, 3D-IRCADb):

- `dice` = 2|P∩R| / (|P| + |R|), `jaccard` = |P∩R| / |P∪R|.
- `voe` (volumetric overlap error) = 1 - jaccard, a fraction in [0, 1] (not a percentage).
- `rvd` (relative volume difference) = (|P| - |R|) / |R|, a signed fraction: positive
  when the prediction is too large.
- Surface voxels of a mask are its voxels with at least one 6-neighbour outside the mask
  (the mask minus its binary erosion by the 3-D cross); voxels beyond the volume border
  count as outside, so a mask touching the border has a surface there too.
- Each surface voxel of one mask gets the Euclidean distance in mm to the nearest surface
  voxel of the other mask (`scipy.ndimage.distance_transform_edt` with `sampling=spacing`).
- `assd` (average symmetric surface distance) is the mean of all these distances in both
  directions pooled together, as in SLIVER07: sum(d(P->R)) + sum(d(R->P)) divided by
  |S(P)| + |S(R)|. (MedPy's `assd` instead averages the two directed means; the two agree
  when both surfaces have the same number of voxels.)
- `hd95` = max(P95(d(P->R)), P95(d(R->P))), the larger of the two directed 95th
  percentiles (numpy's linear interpolation), as MedPy's `hd95`; not the 95th percentile
  of the pooled distances.

Empty masks (an organ absent from the prediction or the reference):

| case                      | dice | jaccard | voe | rvd  | assd | hd95 |
|---------------------------|------|---------|-----|------|------|------|
| both empty                | 1    | 1       | 0   | nan  | 0    | 0    |
| reference empty only      | 0    | 0       | 1   | +inf | inf  | inf  |
| prediction empty only     | 0    | 0       | 1   | -1   | inf  | inf  |

rvd of an empty prediction is the ordinary value -1; with an empty reference it is
+inf (a positive volume over zero) and nan when both are empty (0 / 0). Surface
distances to an empty mask are infinite: there is no surface to reach. None of these
cases prints a warning.

The surface distances are computed on the union bounding box of both masks, padded by
one background voxel, so their cost follows the organ size, not the volume size.
"""

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

METRICS = ('dice', 'jaccard', 'voe', 'rvd')
SURFACE_METRICS = ('assd', 'hd95')

# Connected components kept per class by `keep_largest_components`: one liver, two
# kidneys (left and right share class 3). Bone (class 2) is left alone: the skeleton of
# an abdominal CT is many separate pieces (vertebrae, ribs, pelvis) at this resolution,
# and keeping its largest component would delete most true bone.
LCC_COMPONENTS: dict[int, int] = {1: 1, 3: 2}

Spacing = Sequence[float]


def _as_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask != 0


def _pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = _as_bool(pred), _as_bool(ref)
    if pred.shape != ref.shape:
        raise ValueError(f'prediction shape {pred.shape} differs from reference shape {ref.shape}')
    return pred, ref


def _spacing(spacing: Spacing, ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim:
        raise ValueError(f'spacing {spacing} has {len(spacing)} values for a {ndim}-D volume')
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f'spacing {spacing} must be positive and finite')
    return spacing


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every True voxel, or None when there is none."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _counts(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int]:
    """|P ∩ R|, |P|, |R|."""
    pred, ref = _pair(pred, ref)
    return (int(np.count_nonzero(pred & ref)), int(np.count_nonzero(pred)),
            int(np.count_nonzero(ref)))


def _overlap(inter: int, n_pred: int, n_ref: int) -> dict[str, float]:
    """dice, jaccard, voe and rvd from the voxel counts, with the empty-mask rules."""
    total = n_pred + n_ref
    jac = 1.0 if total == 0 else inter / (total - inter)
    if n_ref == 0:
        rel = math.nan if n_pred == 0 else math.inf
    else:
        rel = (n_pred - n_ref) / n_ref
    return {
        'dice': 1.0 if total == 0 else 2.0 * inter / total,
        'jaccard': jac,
        'voe': 1.0 - jac,
        'rvd': rel,
    }


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient 2|P∩R| / (|P| + |R|); 1.0 when both masks are empty."""
    return _overlap(*_counts(pred, ref))['dice']


def jaccard(pred: np.ndarray, ref: np.ndarray) -> float:
    """Jaccard index |P∩R| / |P∪R|; 1.0 when both masks are empty."""
    return _overlap(*_counts(pred, ref))['jaccard']


def voe(pred: np.ndarray, ref: np.ndarray) -> float:
    """Volumetric overlap error 1 - Jaccard, as a fraction in [0, 1]."""
    return _overlap(*_counts(pred, ref))['voe']


def rvd(pred: np.ndarray, ref: np.ndarray) -> float:
    """Relative volume difference (|P| - |R|) / |R|, signed (positive: prediction too large).

    +inf when only the reference is empty, nan when both are.
    """
    return _overlap(*_counts(pred, ref))['rvd']


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: voxels of the mask with a 6-neighbour (face neighbour) outside it.

    Voxels beyond the volume border count as outside.
    """
    mask = _as_bool(mask)
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0)


def surface_distances(pred: np.ndarray, ref: np.ndarray,
                      spacing: Spacing) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (d(P->R), d(R->P)).

    d(P->R) holds, for each surface voxel of `pred`, the distance to the nearest surface
    voxel of `ref` (and the other way round). Distances towards an empty mask are inf;
    an empty mask contributes an empty array.
    """
    pred, ref = _pair(pred, ref)
    spacing = _spacing(spacing, pred.ndim)
    box = _bounding_box(pred | ref)
    if box is None:
        return np.zeros(0), np.zeros(0)
    # Crop to the union box plus one background voxel on every side: the erosion then
    # sees the volume border as outside, and every surface voxel of both masks is inside
    # the crop, so the distance transforms are exact.
    pred = np.pad(pred[box], 1)
    ref = np.pad(ref[box], 1)
    surf_pred, surf_ref = surface_voxels(pred), surface_voxels(ref)
    if not surf_ref.any():
        return np.full(np.count_nonzero(surf_pred), np.inf), np.zeros(0)
    if not surf_pred.any():
        return np.zeros(0), np.full(np.count_nonzero(surf_ref), np.inf)
    to_ref = ndimage.distance_transform_edt(~surf_ref, sampling=spacing)[surf_pred]
    to_pred = ndimage.distance_transform_edt(~surf_pred, sampling=spacing)[surf_ref]
    return to_ref, to_pred


def _assd(to_ref: np.ndarray, to_pred: np.ndarray) -> float:
    pooled = np.concatenate([to_ref, to_pred])
    if pooled.size == 0:
        return 0.0
    if not np.all(np.isfinite(pooled)):
        return math.inf
    return float(pooled.mean())


def _hd95(to_ref: np.ndarray, to_pred: np.ndarray) -> float:
    if to_ref.size == 0 and to_pred.size == 0:
        return 0.0
    if to_ref.size == 0 or to_pred.size == 0:
        return math.inf
    if not (np.all(np.isfinite(to_ref)) and np.all(np.isfinite(to_pred))):
        return math.inf
    return float(max(np.percentile(to_ref, 95), np.percentile(to_pred, 95)))


def assd(pred: np.ndarray, ref: np.ndarray, spacing: Spacing) -> float:
    """Average symmetric surface distance in mm (both directions pooled).

    0 when both masks are empty, inf when exactly one is.
    """
    return _assd(*surface_distances(pred, ref, spacing))


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Spacing) -> float:
    """95% Hausdorff distance in mm: max(P95(d(P->R)), P95(d(R->P))).

    0 when both masks are empty, inf when exactly one is.
    """
    return _hd95(*surface_distances(pred, ref, spacing))


def organ_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Spacing, *,
                  surface: bool = True) -> dict[str, float]:
    """All metrics of one organ: dice, jaccard, voe, rvd and, with `surface`, assd, hd95."""
    out = _overlap(*_counts(pred, ref))
    if surface:
        to_ref, to_pred = surface_distances(pred, ref, spacing)
        out['assd'] = _assd(to_ref, to_pred)
        out['hd95'] = _hd95(to_ref, to_pred)
    return out


def _keep_largest(mask: np.ndarray, count: int) -> np.ndarray:
    """The `count` largest 26-connected components of a bool mask (ties: lower label first)."""
    out = np.zeros(mask.shape, dtype=bool)
    box = _bounding_box(mask)
    if box is None or count <= 0:
        return out
    crop = mask[box]
    labels, n = ndimage.label(crop, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if n <= count:
        out[box] = crop
        return out
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = np.argsort(-sizes, kind='stable')[:count]
    out[box] = np.isin(labels, keep)
    return out


def largest_connected_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a mask (bool); an empty mask stays empty."""
    return _keep_largest(_as_bool(mask), 1)


def keep_largest_components(classes: np.ndarray, class_ids: Iterable[int] | None = None, *,
                            per_class_components: Mapping[int, int] | None = None,
                            ) -> np.ndarray:
    """Per class, keep only its largest 26-connected components; removed voxels become 0.

    `per_class_components` maps a class id to how many components to keep (default
    `LCC_COMPONENTS`: one liver, two kidneys, bone untouched). `class_ids` picks the
    classes to clean (default: the keys of that mapping); a listed class missing from
    the mapping keeps one component. Returns a new class volume of the same dtype.
    """
    classes = np.asarray(classes)
    mapping = dict(LCC_COMPONENTS if per_class_components is None else per_class_components)
    ids = list(mapping) if class_ids is None else [int(c) for c in class_ids]
    out = classes.copy()
    for class_id in ids:
        if class_id == 0:
            continue
        mask = classes == class_id
        removed = mask & ~_keep_largest(mask, int(mapping.get(class_id, 1)))
        out[removed] = 0
    return out


def summarize(per_patient: Mapping[str, Mapping[str, object]],
              ) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and std over patients of each organ's metrics.

    `per_patient` maps patient -> organ -> metric -> value. An organ entry that is not a
    mapping (None, or a marker such as 'not annotated') is skipped, and so is a metric
    value that is None or nan (rvd of two empty masks). Infinite values (an organ missed
    entirely, or predicted where there is none) are left out of the mean and std too and
    counted in `n_inf`, so one miss does not turn the figure into inf; report `n_inf`
    beside the mean.

    Returns organ -> {'mean', 'std', 'n', 'n_inf'} -> metric -> value: the mean and the
    population std (ddof 0) over the `n` finite values, both nan when `n` is 0.
    """
    values: dict[str, dict[str, list[float]]] = {}
    for organs in per_patient.values():
        for organ, metrics in organs.items():
            if not isinstance(metrics, Mapping):
                continue
            organ_values = values.setdefault(organ, {})
            for name, value in metrics.items():
                metric_values = organ_values.setdefault(name, [])
                if value is not None and not math.isnan(float(value)):
                    metric_values.append(float(value))
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for organ, metrics in values.items():
        stats: dict[str, dict[str, float]] = {'mean': {}, 'std': {}, 'n': {}, 'n_inf': {}}
        for name, vals in metrics.items():
            arr = np.asarray(vals, dtype=np.float64)
            finite = arr[np.isfinite(arr)]
            stats['mean'][name] = float(finite.mean()) if finite.size else math.nan
            stats['std'][name] = float(finite.std()) if finite.size else math.nan
            stats['n'][name] = int(finite.size)
            stats['n_inf'][name] = int(arr.size - finite.size)
        summary[organ] = stats
    return summary
