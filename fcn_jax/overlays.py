"""CT slices drawn with coloured organ overlays, for TensorBoard and prediction PNGs."""

import numpy as np
from PIL import Image, ImageDraw

# Display window for abdominal CT (W400/L40), in HU.
ABDOMEN_WINDOW = (-160.0, 240.0)

# RGB per class id: background none, liver red, bone yellow, kidney green.
CLASS_COLORS = np.array([(0, 0, 0), (235, 64, 52), (250, 215, 60), (60, 200, 90)], np.uint8)


def outline(classes: np.ndarray) -> np.ndarray:
    """Bool [H, W]: pixels of a non-background class with a 4-neighbour of another class."""
    c = np.pad(classes, 1, mode='edge')
    centre = c[1:-1, 1:-1]
    edge = ((centre != c[:-2, 1:-1]) | (centre != c[2:, 1:-1])
            | (centre != c[1:-1, :-2]) | (centre != c[1:-1, 2:]))
    return edge & (centre > 0)


def overlay(gray: np.ndarray, classes: np.ndarray, *, alpha: float = 0.3) -> np.ndarray:
    """uint8 RGB [H, W, 3]: `gray` (windowed, in [0, 1]) with filled, outlined class regions."""
    base = np.repeat((np.clip(gray, 0, 1) * 255)[..., None], 3, axis=-1).astype(np.float32)
    classes = np.asarray(classes).astype(np.int64)
    colors = CLASS_COLORS[classes].astype(np.float32)
    inside = (classes > 0)[..., None]
    out = np.where(inside, (1 - alpha) * base + alpha * colors, base)
    edge = outline(classes)
    out[edge] = colors[edge]
    return out.astype(np.uint8)


def caption(image: np.ndarray, text: str) -> np.ndarray:
    """`image` with `text` written in its top-left corner."""
    canvas = Image.fromarray(image)
    ImageDraw.Draw(canvas).text((4, 2), text, fill=(255, 255, 255))
    return np.asarray(canvas)


def side_by_side(gray: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray,
                 *, gap: int = 4, scale: int = 1) -> np.ndarray:
    """[ground truth | prediction] overlays, captioned (prediction alone when `truth` is None).

    `scale` enlarges the panels (nearest neighbour) before the captions are written.
    """
    def panel(classes: np.ndarray, text: str) -> np.ndarray:
        image = overlay(gray, classes).repeat(scale, axis=0).repeat(scale, axis=1)
        return caption(image, text)

    if truth is None:
        return panel(prediction, 'prediction')
    spacer = np.full((gray.shape[0] * scale, gap, 3), 255, np.uint8)
    return np.concatenate([panel(truth, 'ground truth'), spacer, panel(prediction, 'prediction')],
                          axis=1)
