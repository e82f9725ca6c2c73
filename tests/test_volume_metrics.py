"""Tests for fcn_jax.volume_metrics on hand-made volumes with known answers."""

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from fcn_jax import volume_metrics as vm

SPACING = (2.5, 0.8, 0.8)  # (dz, dy, dx) in mm


def cube(shape=(14, 14, 14), start=(2, 2, 2), side=10) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + side) for s in start)] = True
    return mask


def ball(radius: float, shape=(40, 40, 40)) -> np.ndarray:
    centre = [(n - 1) / 2 for n in shape]
    z, y, x = np.ogrid[tuple(slice(0, n) for n in shape)]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius ** 2


# A 10-voxel cube has 10**3 - 8**3 = 488 surface voxels.
#
# Shift by one voxel along x: A spans x in [2, 12), B spans x in [3, 13).
# Surface voxels of A that are not surface voxels of B:
# - the face x=2 (10 x 10 = 100 voxels) lies outside B; the nearest surface voxel of B is
#   the face x=3 next to it: 0.8 mm (dx), and nothing of B is closer.
# - the face x=11 without its rim (8 x 8 = 64 voxels) lies inside B but is not on B's
#   surface; the nearest surface of B is the face x=12 at 0.8 mm, and B's y faces are at
#   least 0.8 mm away (z faces 2.5 mm), so 0.8 mm.
# Every other surface voxel of A (the rim of the y and z faces) is a surface voxel of B: 0.
# So 164 of A's 488 surface distances are 0.8 mm and the rest 0; by symmetry the same for
# B -> A. ASSD = 2 * 164 * 0.8 / (2 * 488) = 0.8 * 164 / 488 mm. 164 / 488 = 33.6% of the
# distances are 0.8, more than 5%, so each directed 95th percentile is 0.8: HD95 = 0.8 mm.
X_SHIFT_ASSD = 0.8 * 164 / 488
#
# Shift by one slice along z: A spans z in [2, 12), B spans z in [3, 13).
# - the face z=2 (100 voxels) lies outside B: every voxel of B is at least one slice
#   away, and B's face z=3 is right there: 2.5 mm.
# - the face z=11 without its rim (8 x 8 = 64 voxels) lies inside B; the nearest surface
#   of B is either the face z=12 (2.5 mm) or a y/x face of B in the same slice, r voxels
#   away in-plane for a voxel on ring r (r = 1..4 from the rim): min(0.8 r, 2.5) mm.
#   Ring 1 (8x8 outline, 28 voxels): 0.8; ring 2 (6x6 outline, 20): 1.6;
#   ring 3 (4x4 outline, 12): 2.4; ring 4 (the central 2x2, 4): min(3.2, 2.5) = 2.5.
# - all other surface voxels of A are surface voxels of B: 0.
# Directed sum = 104 * 2.5 + 12 * 2.4 + 20 * 1.6 + 28 * 0.8 = 343.2 mm over 488 voxels, the
# same both ways by symmetry, so ASSD = 343.2 / 488 mm. 104 of 488 distances (21%) are
# 2.5 mm, the largest value, so each directed 95th percentile is 2.5: HD95 = 2.5 mm.
Z_SHIFT_ASSD = (104 * 2.5 + 12 * 2.4 + 20 * 1.6 + 28 * 0.8) / 488


def test_cube_shift_along_x():
    a = cube()
    b = cube(start=(2, 2, 3))
    assert (a & b).sum() == 900 and a.sum() == b.sum() == 1000
    m = vm.organ_metrics(b, a, SPACING)
    assert list(m) == ['dice', 'jaccard', 'voe', 'rvd', 'assd', 'hd95']
    assert m['dice'] == pytest.approx(0.9, abs=1e-12)
    assert m['jaccard'] == pytest.approx(900 / 1100, abs=1e-12)
    assert m['voe'] == pytest.approx(200 / 1100, abs=1e-12)
    assert m['rvd'] == 0.0
    assert m['assd'] == pytest.approx(X_SHIFT_ASSD, abs=1e-9)
    assert m['hd95'] == pytest.approx(0.8, abs=1e-9)

    to_ref, to_pred = vm.surface_distances(b, a, SPACING)
    for d in (to_ref, to_pred):
        assert d.size == 488
        assert np.count_nonzero(np.isclose(d, 0.8)) == 164
        assert np.count_nonzero(d == 0) == 488 - 164


def test_cube_shift_along_z():
    a = cube()
    b = cube(start=(3, 2, 2))
    m = vm.organ_metrics(b, a, SPACING)
    assert m['dice'] == pytest.approx(0.9, abs=1e-12)
    assert m['rvd'] == 0.0
    assert m['assd'] == pytest.approx(Z_SHIFT_ASSD, abs=1e-9)
    assert m['hd95'] == pytest.approx(2.5, abs=1e-9)

    to_ref, _ = vm.surface_distances(b, a, SPACING)
    values, counts = np.unique(np.round(to_ref, 6), return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {
        0.0: 488 - 164, 0.8: 28, 1.6: 20, 2.4: 12, 2.5: 104}


def test_spacing_matters():
    a = cube()
    along_z = vm.organ_metrics(cube(start=(3, 2, 2)), a, SPACING)
    along_x = vm.organ_metrics(cube(start=(2, 2, 3)), a, SPACING)
    # The same one-voxel shift: identical overlap, different distances in mm.
    for key in ('dice', 'jaccard', 'voe', 'rvd'):
        assert along_z[key] == along_x[key]
    assert along_z['hd95'] == pytest.approx(2.5) and along_x['hd95'] == pytest.approx(0.8)
    # The largest distance is one voxel step along the shift axis.
    assert vm.surface_distances(cube(start=(3, 2, 2)), a, SPACING)[0].max() == pytest.approx(2.5)
    assert vm.surface_distances(cube(start=(2, 2, 3)), a, SPACING)[0].max() == pytest.approx(0.8)
    # Swapping the z and x axes of both the volume and the spacing changes nothing.
    swapped = vm.organ_metrics(cube(start=(3, 2, 2)).transpose(2, 1, 0), a.transpose(2, 1, 0),
                               SPACING[::-1])
    assert swapped == pytest.approx(along_z)
    # Isotropic spacing: the z and x shifts agree.
    iso_z = vm.organ_metrics(cube(start=(3, 2, 2)), a, (1.0, 1.0, 1.0))
    iso_x = vm.organ_metrics(cube(start=(2, 2, 3)), a, (1.0, 1.0, 1.0))
    assert iso_z == pytest.approx(iso_x)
    assert iso_x['assd'] == pytest.approx(164 / 488)
    # Scaling every spacing scales the distances.
    scaled = vm.organ_metrics(cube(start=(3, 2, 2)), a, tuple(3 * s for s in SPACING))
    assert scaled['assd'] == pytest.approx(3 * along_z['assd'])
    assert scaled['hd95'] == pytest.approx(3 * along_z['hd95'])


def test_spheres():
    small, large = ball(10.0), ball(13.0)
    m = vm.organ_metrics(small, large, (1.0, 1.0, 1.0))
    assert abs(m['assd'] - 3.0) <= 1.0
    assert abs(m['hd95'] - 3.0) <= 1.0
    assert m['rvd'] == pytest.approx(small.sum() / large.sum() - 1)
    assert m['rvd'] < 0
    # Symmetric in its arguments.
    assert vm.assd(large, small, (1.0, 1.0, 1.0)) == pytest.approx(m['assd'])
    assert vm.hd95(large, small, (1.0, 1.0, 1.0)) == pytest.approx(m['hd95'])


def test_identical_masks():
    a = ball(8.0, shape=(20, 20, 20))
    m = vm.organ_metrics(a, a, SPACING)
    assert m == {'dice': 1.0, 'jaccard': 1.0, 'voe': 0.0, 'rvd': 0.0, 'assd': 0.0, 'hd95': 0.0}


def test_single_functions_match_organ_metrics():
    a, b = cube(), cube(start=(3, 1, 2))
    m = vm.organ_metrics(b, a, SPACING)
    assert vm.dice(b, a) == m['dice']
    assert vm.jaccard(b, a) == m['jaccard']
    assert vm.voe(b, a) == m['voe']
    assert vm.rvd(b, a) == m['rvd']
    assert vm.assd(b, a, SPACING) == m['assd']
    assert vm.hd95(b, a, SPACING) == m['hd95']
    assert list(vm.organ_metrics(b, a, SPACING, surface=False)) == [
        'dice', 'jaccard', 'voe', 'rvd']


def test_rvd_sign():
    ref = cube()
    assert vm.rvd(cube(side=11), ref) == pytest.approx((1331 - 1000) / 1000)
    assert vm.rvd(cube(side=9), ref) == pytest.approx((729 - 1000) / 1000)
    assert vm.rvd(np.zeros_like(ref), ref) == -1.0


def _no_warnings(fn):
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        return fn()


def test_both_empty():
    empty = np.zeros((6, 7, 8), dtype=bool)
    m = _no_warnings(lambda: vm.organ_metrics(empty, empty, SPACING))
    assert m['dice'] == 1.0 and m['jaccard'] == 1.0 and m['voe'] == 0.0
    assert math.isnan(m['rvd'])
    assert m['assd'] == 0.0 and m['hd95'] == 0.0


@pytest.mark.parametrize('empty_side', ['pred', 'ref'])
def test_one_empty(empty_side):
    full = cube()
    empty = np.zeros_like(full)
    pred, ref = (empty, full) if empty_side == 'pred' else (full, empty)
    m = _no_warnings(lambda: vm.organ_metrics(pred, ref, SPACING))
    assert m['dice'] == 0.0 and m['jaccard'] == 0.0 and m['voe'] == 1.0
    assert m['rvd'] == (-1.0 if empty_side == 'pred' else math.inf)
    assert m['assd'] == math.inf and m['hd95'] == math.inf


def test_shape_and_spacing_checks():
    with pytest.raises(ValueError):
        vm.dice(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 3), bool))
    with pytest.raises(ValueError):
        vm.assd(cube(), cube(), (1.0, 1.0))
    with pytest.raises(ValueError):
        vm.hd95(cube(), cube(), (1.0, 0.0, 1.0))


def _brute_force_distances(pred, ref, spacing):
    """Surface distances without cropping: pairwise distances between surface voxels."""
    cross = ndimage.generate_binary_structure(3, 1)

    def surf(mask):
        return mask & ~ndimage.binary_erosion(mask, cross, border_value=0)

    sp, sr = surf(pred), surf(ref)
    points_p = np.argwhere(sp) * np.asarray(spacing)
    points_r = np.argwhere(sr) * np.asarray(spacing)
    pairwise = cdist(points_p, points_r)
    return pairwise.min(axis=1), pairwise.min(axis=0)


def test_matches_brute_force_with_border_contact():
    rng = np.random.default_rng(0)
    # Smoothed noise blobs that touch the volume border: the border counts as outside.
    pred = ndimage.gaussian_filter(rng.normal(size=(12, 16, 16)), 2) > 0.05
    ref = ndimage.gaussian_filter(rng.normal(size=(12, 16, 16)), 2) > 0.05
    pred[0], ref[:, :, -1] = True, True
    expected = _brute_force_distances(pred, ref, SPACING)
    got = vm.surface_distances(pred, ref, SPACING)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(np.sort(g), np.sort(e), atol=1e-9)
    pooled = np.concatenate(expected)
    assert vm.assd(pred, ref, SPACING) == pytest.approx(pooled.mean())
    assert vm.hd95(pred, ref, SPACING) == pytest.approx(
        max(np.percentile(expected[0], 95), np.percentile(expected[1], 95)))


def test_surface_voxels_include_border():
    full = np.ones((2, 4, 5), dtype=bool)  # every voxel touches the border
    assert vm.surface_voxels(full).all()
    block = np.ones((5, 5, 5), dtype=bool)
    assert vm.surface_voxels(block).sum() == 125 - 27


def test_largest_connected_component():
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[1:5, 1:5, 1:5] = True  # 64 voxels
    mask[7:9, 7:9, 7:9] = True  # 8 voxels
    lcc = vm.largest_connected_component(mask)
    assert lcc.dtype == bool and lcc.sum() == 64 and lcc[1:5, 1:5, 1:5].all()
    assert not vm.largest_connected_component(np.zeros((4, 4, 4))).any()
    # 26-connectivity: voxels touching only at a corner form one component.
    diagonal = np.zeros((4, 4, 4), dtype=bool)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = diagonal[3, 3, 3] = True
    assert vm.largest_connected_component(diagonal).sum() == 2


def test_keep_largest_components():
    classes = np.zeros((12, 20, 20), dtype=np.uint8)
    classes[1:6, 1:8, 1:8] = 1          # liver
    classes[8:10, 1:3, 1:3] = 1         # liver fragment: removed
    classes[1:4, 12:15, 1:4] = 3        # right kidney
    classes[1:4, 12:15, 14:17] = 3      # left kidney
    classes[9:11, 15:17, 9:11] = 3      # kidney fragment (smallest of three): removed
    classes[1:3, 17:19, 8:10] = 2       # two bone pieces: both kept
    classes[9:11, 9:11, 17:19] = 2
    out = vm.keep_largest_components(classes)
    assert out.dtype == classes.dtype
    assert (out[8:10, 1:3, 1:3] == 0).all()
    assert (out[9:11, 15:17, 9:11] == 0).all()
    expected = classes.copy()
    expected[8:10, 1:3, 1:3] = 0
    expected[9:11, 15:17, 9:11] = 0
    np.testing.assert_array_equal(out, expected)
    assert classes[8:10, 1:3, 1:3].all()  # input untouched
    # Only the listed classes are cleaned; bone on request keeps one component.
    only_liver = vm.keep_largest_components(classes, [1])
    assert (only_liver == 3).sum() == (classes == 3).sum()
    with_bone = vm.keep_largest_components(classes, [2])
    assert (with_bone == 2).sum() == 8
    custom = vm.keep_largest_components(classes, per_class_components={3: 1})
    assert (custom == 3).sum() == 27 and (custom == 1).sum() == (classes == 1).sum()


def test_summarize():
    per_patient = {
        'p1': {'liver': {'dice': 0.9, 'assd': 1.0, 'rvd': 0.1},
               'kidney': {'dice': 0.8, 'assd': 2.0, 'rvd': math.nan}},
        'p2': {'liver': {'dice': 0.7, 'assd': 3.0, 'rvd': -0.1},
               'kidney': None},
        'p3': {'liver': {'dice': 0.8, 'assd': math.inf, 'rvd': None},
               'kidney': 'not annotated'},
        'p4': {'kidney': {'dice': math.nan, 'assd': math.nan, 'rvd': math.nan}},
    }
    s = _no_warnings(lambda: vm.summarize(per_patient))
    liver = s['liver']
    assert set(liver) == {'mean', 'std', 'n', 'n_inf'}
    assert liver['mean']['dice'] == pytest.approx(0.8)
    assert liver['std']['dice'] == pytest.approx(np.std([0.9, 0.7, 0.8]))
    assert liver['n']['dice'] == 3 and liver['n_inf']['dice'] == 0
    # Infinite values are counted apart, not averaged.
    assert (liver['mean']['assd'], liver['std']['assd']) == (2.0, 1.0)
    assert (liver['n']['assd'], liver['n_inf']['assd']) == (2, 1)
    assert liver['mean']['rvd'] == pytest.approx(0.0) and liver['n']['rvd'] == 2
    # Kidney: a value only for p1; None, a marker string and nan are skipped.
    kidney = s['kidney']
    assert (kidney['mean']['dice'], kidney['std']['dice'], kidney['n']['dice']) == (0.8, 0.0, 1)
    assert kidney['n']['rvd'] == 0 and kidney['n_inf']['rvd'] == 0
    assert math.isnan(kidney['mean']['rvd']) and math.isnan(kidney['std']['rvd'])
