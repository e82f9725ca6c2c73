"""Overlay drawing: colours, outlines, panel layout."""

import numpy as np

from fcn_jax import overlays


def test_outline_is_the_region_border():
    classes = np.zeros((7, 7), int)
    classes[2:5, 2:5] = 1
    edge = overlays.outline(classes)
    assert edge.sum() == 8 and not edge[3, 3] and edge[2, 2]


def test_overlay_colours_regions_and_keeps_background_gray():
    gray = np.full((6, 6), 0.5)
    classes = np.zeros((6, 6), int)
    classes[1:5, 1:5] = 3
    rgb = overlays.overlay(gray, classes)
    assert rgb.dtype == np.uint8 and rgb.shape == (6, 6, 3)
    np.testing.assert_array_equal(rgb[0, 0], [127, 127, 127])
    np.testing.assert_array_equal(rgb[1, 1], overlays.CLASS_COLORS[3])  # outline: full colour
    assert rgb[2, 2, 1] > rgb[2, 2, 0]  # inside: tinted green


def test_side_by_side_layout():
    gray = np.zeros((32, 32))
    classes = np.zeros((32, 32), int)
    assert overlays.side_by_side(gray, classes, classes, scale=2).shape == (64, 64 + 4 + 64, 3)
    assert overlays.side_by_side(gray, None, classes).shape == (32, 32, 3)
