"""On-device augmentation: image and mask get the same transform, masks keep class ids."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fcn_jax import augment  # noqa: E402

SIZE = 64

# Compiled once per shape and mode.
augment_batch = jax.jit(augment.augment_batch, static_argnums=3)


def blocky_batch(batch: int, seed: int = 0, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Random 8x8-pixel blocks of classes 0..3; the image is class id / 3 (mask = 3 * image)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 4, (batch, SIZE // 8, SIZE // 8))
    mask = np.kron(blocks, np.ones((1, 8, 8))).astype(np.int32)
    image = np.repeat((mask / 3.0).astype(np.float32)[..., None], channels, axis=-1)
    return image, mask


def flips_of(x: np.ndarray) -> list[np.ndarray]:
    """The 4 `flips` outcomes of one example [H, W, ...], in choice order."""
    return [x, x[:, ::-1], x[::-1], np.rot90(x)]


def test_none_is_identity():
    image, mask = blocky_batch(4)
    out_image, out_mask = augment.augment_batch(jax.random.PRNGKey(0), image, mask, 'none')
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_mask, mask)


def test_bad_arguments():
    image, mask = blocky_batch(2)
    with pytest.raises(ValueError, match="unknown augment mode 'rotate'"):
        augment.augment_batch(jax.random.PRNGKey(0), image, mask, 'rotate')
    with pytest.raises(ValueError, match='square'):
        augment.augment_batch(jax.random.PRNGKey(0), image[:, :32], mask[:, :32], 'flips')
    with pytest.raises(ValueError, match='mask'):
        augment.augment_batch(jax.random.PRNGKey(0), image, mask[..., None], 'flips')


def test_flips_apply_one_of_four_transforms_to_both():
    image, mask = blocky_batch(32, channels=3)
    out = augment_batch(jax.random.PRNGKey(1), image, mask, 'flips')
    out_image, out_mask = map(np.asarray, out)
    assert out_image.shape == image.shape and out_image.dtype == np.float32
    assert out_mask.shape == mask.shape and out_mask.dtype == np.int32
    choices = []
    for b in range(len(image)):
        candidates = flips_of(image[b])
        assert len({c.tobytes() for c in candidates}) == 4  # the 4 outcomes are distinguishable
        (k,) = [k for k, c in enumerate(candidates) if np.array_equal(out_image[b], c)]
        np.testing.assert_array_equal(out_mask[b], flips_of(mask[b])[k])  # same transform
        np.testing.assert_array_equal(out_mask[b], np.rint(3 * out_image[b, ..., 0]))
        choices.append(k)
    assert set(choices) == {0, 1, 2, 3}


def test_strong_warp_of_a_pure_flip_is_the_flip():
    # `strong` folds the flip choice into its warp: without scale and rotation it is exact.
    image, mask = blocky_batch(4, seed=1, channels=2)
    choice = jnp.arange(4)
    matrix = jnp.asarray(augment._FLIP_MATRICES, jnp.float32)[choice]
    warped_image, warped_mask = augment._warp(jnp.asarray(image), jnp.asarray(mask), matrix)
    np.testing.assert_allclose(warped_image, augment._flip(jnp.asarray(image), choice), atol=1e-6)
    np.testing.assert_array_equal(warped_mask, augment._flip(jnp.asarray(mask), choice))
    for k in range(4):
        np.testing.assert_array_equal(warped_mask[k], flips_of(mask[k])[k])


def test_same_key_same_result_other_key_differs():
    image, mask = blocky_batch(8)
    a = augment_batch(jax.random.PRNGKey(3), image, mask, 'strong')
    b = augment_batch(jax.random.PRNGKey(3), image, mask, 'strong')
    c = augment_batch(jax.random.PRNGKey(4), image, mask, 'strong')
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_strong_keeps_shapes_ranges_and_class_ids():
    image, mask = blocky_batch(16, seed=2, channels=3)
    mask = np.where(mask == 3, 1, mask)  # classes 0..2 only
    out = augment_batch(jax.random.PRNGKey(5), image, mask, 'strong')
    out_image, out_mask = map(np.asarray, out)
    assert out_image.shape == image.shape and out_image.dtype == image.dtype
    assert out_mask.shape == mask.shape and out_mask.dtype == mask.dtype
    assert out_image.min() >= 0.0 and out_image.max() <= 1.0
    assert set(np.unique(out_mask)) <= {0, 1, 2}  # nearest sampling never makes new ids
    np.testing.assert_allclose(out_image[..., 0], out_image[..., 2], atol=1e-6)  # still replicated
    # The geometry changed (scale and rotation) for every example beyond a pure flip.
    for b in range(len(mask)):
        assert not any(np.array_equal(out_mask[b], m) for m in flips_of(mask[b]))


def test_strong_moves_image_and_mask_together():
    # Foreground (mask > 0) is bright, background dark, far apart beyond the intensity jitter:
    # thresholding the augmented image must give back the augmented mask but at block edges.
    _, mask = blocky_batch(16, seed=3)
    image = np.where(mask > 0, 0.8, 0.2).astype(np.float32)[..., None]
    out_image, out_mask = augment_batch(jax.random.PRNGKey(6), image, mask, 'strong')
    agree = np.asarray((out_image[..., 0] > 0.5) == (out_mask > 0))
    assert agree.mean() > 0.97
    assert agree.reshape(len(mask), -1).mean(-1).min() > 0.93
    # Without the warp sharing its coordinates, masks of another key disagree far more.
    _, other_mask = augment_batch(jax.random.PRNGKey(7), image, mask, 'strong')
    assert np.mean(np.asarray((out_image[..., 0] > 0.5) == (other_mask > 0))) < 0.8


def test_runs_under_pmap_with_per_device_keys():
    devices = jax.local_device_count()
    image, mask = blocky_batch(2 * devices)
    image = jnp.asarray(image.reshape(devices, 2, SIZE, SIZE, 1))
    mask = jnp.asarray(mask.reshape(devices, 2, SIZE, SIZE))
    # The same examples on every device, so different outputs come from the keys alone.
    image, mask = jnp.broadcast_to(image[:1], image.shape), jnp.broadcast_to(mask[:1], mask.shape)
    keys = jax.random.split(jax.random.PRNGKey(8), devices)
    out_image, out_mask = jax.pmap(lambda k, i, m: augment.augment_batch(k, i, m, 'strong'))(
        keys, image, mask)
    assert out_image.shape == image.shape and out_mask.shape == mask.shape
    assert devices == 2 and not np.array_equal(out_mask[0], out_mask[1])
