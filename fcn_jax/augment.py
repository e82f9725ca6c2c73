"""Data augmentation on the device, inside the jitted (or pmapped) train step.

`augment_batch` is pure `jax.numpy`, vectorised over the batch, with per-example
randomness drawn from one PRNG key. The host pipeline (`input_pipeline`) yields
unaugmented batches; train.py calls `augment_batch` per device with a per-device key.

Modes (`config.augment`):

- `none`: identity.
- `flips`: per example, uniformly one of: nothing, left-right flip, up-down flip,
  rotation by 90 degrees (counter-clockwise, `jnp.rot90`).
- `strong`: `flips`, then a random scale in [0.8, 1.2] about the centre (cropped or
  zero-padded back to the same size), a rotation in [-10, 10] degrees, contrast and
  brightness jitter of +-10% in the windowed [0, 1] intensity space, and Gaussian
  noise (sigma 0.02); the image is clipped back to [0, 1].

Image and mask always get the same geometric transform: the image is sampled
bilinearly, the mask with nearest neighbour (class ids are never interpolated).
Pixels mapped from outside the slice are 0 in the image (the bottom of the HU
window) and background (0) in the mask. Images must be square, so that a 90 degree
rotation keeps the shape.
"""

import math

import jax
import jax.numpy as jnp

MODES = ('none', 'flips', 'strong')

SCALE_RANGE = (0.8, 1.2)
MAX_ROTATION_DEGREES = 10.0
CONTRAST_JITTER = 0.1
BRIGHTNESS_JITTER = 0.1
NOISE_STD = 0.02

# Flip choices: 0 nothing, 1 left-right, 2 up-down, 3 rot90 (counter-clockwise).
NUM_FLIPS = 4

# Per choice, the 2x2 map from an output pixel's (row, col) offset from the centre
# to the source pixel's offset.
_FLIP_MATRICES = (
    ((1.0, 0.0), (0.0, 1.0)),
    ((1.0, 0.0), (0.0, -1.0)),
    ((-1.0, 0.0), (0.0, 1.0)),
    ((0.0, 1.0), (-1.0, 0.0)),
)


def augment_batch(rng: jax.Array, image: jax.Array, mask: jax.Array,
                  mode: str) -> tuple[jax.Array, jax.Array]:
    """Augments image [B, H, W, C] (float, windowed to [0, 1]) and mask [B, H, W] (class ids).

    Returns arrays of the same shapes and dtypes. `mode` is `none`, `flips` or `strong`;
    it must be a Python string (static under jit). H must equal W.
    """
    if mode not in MODES:
        raise ValueError(f'unknown augment mode {mode!r}: use one of {", ".join(MODES)}')
    if image.ndim != 4 or mask.ndim != 3 or image.shape[:3] != mask.shape:
        raise ValueError(f'expected image [B, H, W, C] and mask [B, H, W], '
                         f'got {image.shape} and {mask.shape}')
    if image.shape[1] != image.shape[2]:
        raise ValueError(f'augmentation needs square images, got {image.shape[1]}x{image.shape[2]}')
    if mode == 'none':
        return image, mask
    flip_rng, geometry_rng, intensity_rng = jax.random.split(rng, 3)
    choice = jax.random.randint(flip_rng, (image.shape[0],), 0, NUM_FLIPS)
    if mode == 'flips':
        return _flip(image, choice), _flip(mask, choice)
    matrix = jnp.asarray(_FLIP_MATRICES, jnp.float32)[choice] @ _scale_rotation(
        geometry_rng, image.shape[0])
    image, mask = _warp(image, mask, matrix)
    return _jitter(intensity_rng, image), mask


def _flip(x: jax.Array, choice: jax.Array) -> jax.Array:
    """Applies flip choice[b] to example b of x [B, H, W, ...]; exact (no resampling)."""
    variants = (x, x[:, :, ::-1], x[:, ::-1], jnp.rot90(x, axes=(1, 2)))
    shape = (-1,) + (1,) * (x.ndim - 1)
    out = variants[0]
    for k in range(1, NUM_FLIPS):
        out = jnp.where((choice == k).reshape(shape), variants[k], out)
    return out


def _scale_rotation(rng: jax.Array, batch: int) -> jax.Array:
    """Per-example 2x2 output-to-source maps [B, 2, 2] for a random zoom and rotation."""
    scale_rng, angle_rng = jax.random.split(rng)
    scale = jax.random.uniform(scale_rng, (batch,), minval=SCALE_RANGE[0], maxval=SCALE_RANGE[1])
    limit = math.radians(MAX_ROTATION_DEGREES)
    angle = jax.random.uniform(angle_rng, (batch,), minval=-limit, maxval=limit)
    cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale
    return jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)


def _warp(image: jax.Array, mask: jax.Array, matrix: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Resamples image (bilinear) and mask (nearest) at matrix @ (out - centre) + centre."""
    batch, size, _, channels = image.shape
    centre = (size - 1) / 2.0
    grid = jnp.arange(size, dtype=jnp.float32) - centre
    offsets = jnp.stack(jnp.meshgrid(grid, grid, indexing='ij'), -1).reshape(-1, 2)  # [P, 2]
    source = jnp.einsum('bij,pj->bpi', matrix, offsets) + centre  # [B, P, 2]
    rows, cols = source[..., 0], source[..., 1]

    def gather(flat: jax.Array, r: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
        inside = (r >= 0) & (r < size) & (c >= 0) & (c < size)
        index = jnp.clip(r, 0, size - 1) * size + jnp.clip(c, 0, size - 1)
        index = index.reshape(index.shape + (1,) * (flat.ndim - 2))
        return jnp.take_along_axis(flat, index, axis=1), inside

    flat_mask = mask.reshape(batch, size * size)
    nearest, inside = gather(flat_mask, jnp.round(rows).astype(jnp.int32),
                             jnp.round(cols).astype(jnp.int32))
    new_mask = jnp.where(inside, nearest, 0).astype(mask.dtype).reshape(mask.shape)

    flat_image = image.reshape(batch, size * size, channels).astype(jnp.float32)
    r0, c0 = jnp.floor(rows), jnp.floor(cols)
    dr, dc = (rows - r0)[..., None], (cols - c0)[..., None]
    r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)
    new_image = jnp.zeros_like(flat_image)
    for r, c, weight in ((r0, c0, (1 - dr) * (1 - dc)), (r0, c0 + 1, (1 - dr) * dc),
                         (r0 + 1, c0, dr * (1 - dc)), (r0 + 1, c0 + 1, dr * dc)):
        values, inside = gather(flat_image, r, c)
        new_image = new_image + jnp.where(inside[..., None], values, 0.0) * weight
    return new_image.reshape(image.shape).astype(image.dtype), new_mask


def _jitter(rng: jax.Array, image: jax.Array) -> jax.Array:
    """Contrast and brightness jitter plus Gaussian noise, the same on every channel."""
    batch, height, width, _ = image.shape
    contrast_rng, brightness_rng, noise_rng = jax.random.split(rng, 3)
    contrast = jax.random.uniform(contrast_rng, (batch, 1, 1, 1), minval=1 - CONTRAST_JITTER,
                                  maxval=1 + CONTRAST_JITTER)
    brightness = jax.random.uniform(brightness_rng, (batch, 1, 1, 1), minval=-BRIGHTNESS_JITTER,
                                    maxval=BRIGHTNESS_JITTER)
    noise = NOISE_STD * jax.random.normal(noise_rng, (batch, height, width, 1))
    out = image.astype(jnp.float32) * contrast + brightness + noise
    return jnp.clip(out, 0.0, 1.0).astype(image.dtype)
