"""Segmentation classes and how IRCAD organ mask folders map onto them.

Classes: 0 background, 1 liver, 2 bone, 3 kidney (left and right together).

IRCAD organ folder names vary across patients. `liver` and `bone` exist for all
patients; kidneys are `leftkidney` / `rightkidney` (a `kidneys` spelling also
occurs) and are annotated for only a few patients. Tumour, vessel and cyst
folders (`livertumor01`, `portalvein`, `liverkyst`, ...) are not classes: in the
real data they lie inside the `liver` mask already, so they are ignored.

A pixel inside several class masks takes the class of highest priority:
liver, then kidney, then bone (`PRIORITY`).
"""

import re
from typing import Iterable, Mapping

import numpy as np

CLASS_NAMES = ('background', 'liver', 'bone', 'kidney')
NUM_CLASSES = len(CLASS_NAMES)
BACKGROUND, LIVER, BONE, KIDNEY = range(NUM_CLASSES)

# Highest priority first.
PRIORITY = (LIVER, KIDNEY, BONE)

_FOLDER_PATTERNS = {
    LIVER: re.compile(r'^liver$'),
    BONE: re.compile(r'^bones?$'),
    KIDNEY: re.compile(r'^(left|right)?kidneys?$'),
}


def _normalise(folder: str) -> str:
    return re.sub(r'[^a-z]', '', folder.lower())


def class_of_folder(folder: str) -> int | None:
    """The class id an organ mask folder contributes to, or None when it is not a class."""
    name = _normalise(folder)
    for class_id, pattern in _FOLDER_PATTERNS.items():
        if pattern.match(name):
            return class_id
    return None


def folders_by_class(folders: Iterable[str]) -> dict[int, list[str]]:
    """Groups organ folder names by the class they belong to (non-class folders dropped)."""
    grouped: dict[int, list[str]] = {}
    for folder in sorted(folders):
        class_id = class_of_folder(folder)
        if class_id is not None:
            grouped.setdefault(class_id, []).append(folder)
    return grouped


def labelled_classes(grouped: Mapping[int, list[str]]) -> np.ndarray:
    """Bool vector [NUM_CLASSES]: which classes are annotated for a patient.

    Background is always True: every pixel outside the annotated organ masks is
    labelled background. A class without any mask folder is False, meaning
    "not annotated" (its pixels may hide inside background), not "absent".
    """
    annotated = np.zeros(NUM_CLASSES, dtype=bool)
    annotated[BACKGROUND] = True
    for class_id in grouped:
        annotated[class_id] = True
    return annotated


def compose(masks: Mapping[int, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Class-id map (uint8) from per-class boolean masks, applying `PRIORITY`."""
    label = np.zeros(shape, dtype=np.uint8)
    for class_id in reversed(PRIORITY):  # lowest priority first, highest written last
        if class_id in masks:
            label[masks[class_id]] = class_id
    return label
