"""The tf.data input pipeline on a tiny phantom (3 patients, 6 slices of 64x64), 2 host devices."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from fcn_jax import input_pipeline  # noqa: E402
from fcn_jax.datasets.ircad import ircad_dataset_builder as idb  # noqa: E402

ALL = 'patient_1+patient_2+patient_3'
NUM_SLICES = 18


@pytest.fixture(scope='session')
def data_dir(tiny_data_dir) -> str:
    return tiny_data_dir


@pytest.fixture(scope='session')
def raw(data_dir) -> list[dict[str, np.ndarray]]:
    """Every slice of the tiny dataset, decoded by TFDS, in dataset order."""
    builder = tfds.builder('ircad/phantom_tiny', data_dir=data_dir)
    return list(tfds.as_numpy(builder.as_dataset(split=ALL, shuffle_files=False)))


def make_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(dict(
        dataset='ircad/phantom_tiny', data_dir=data_dir, train_split=ALL, eval_split=ALL,
        image_size=64, hu_window=(-100.0, 400.0), input_channels=1, augment='none',
        batch_size=4, seed=0, shuffle_buffer=64, prefetch=2))
    config.update(overrides)
    return config


def take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_two_host_devices():
    assert jax.local_device_count() == 2


@pytest.mark.parametrize('channels', [1, 3])
def test_train_batch_shapes_and_dtypes(data_dir, channels):
    batch = next(input_pipeline.train_iterator(make_config(data_dir, input_channels=channels)))
    assert set(batch) == set(input_pipeline.TRAIN_KEYS)
    assert batch['image'].shape == (2, 2, 64, 64, channels) and batch['image'].dtype == np.float32
    assert batch['mask'].shape == (2, 2, 64, 64) and batch['mask'].dtype == np.int32
    assert batch['labelled'].shape == (2, 2, 4) and batch['labelled'].dtype == np.bool_
    assert batch['valid'].shape == (2, 2) and batch['valid'].all()
    assert 0.0 <= batch['image'].min() and batch['image'].max() <= 1.0
    assert set(np.unique(batch['mask'])) <= {0, 1, 2, 3}
    if channels == 3:
        np.testing.assert_array_equal(batch['image'][..., 0], batch['image'][..., 2])


def test_preprocess_windowing():
    config = make_config('unused', image_size=32, hu_window=(-100, 400))
    hu = np.array([-1000, -100, 0, 150, 400, 1000, 3000, -1024], np.int16)
    image = np.resize(hu, (32, 32, 1)).astype(np.int16)
    out = input_pipeline.preprocess({
        'image': tf.constant(image), 'mask': tf.zeros((32, 32, 1), tf.uint8),
        'labelled_classes': tf.constant([True, True, False, False])}, config)
    got = out['image'].numpy()[0, :8, 0]
    np.testing.assert_allclose(got, [0, 0, 0.2, 0.5, 1, 1, 1, 0], atol=1e-6)
    assert out['image'].dtype == tf.float32 and out['mask'].shape == (32, 32)
    assert out['mask'].dtype == tf.int32
    assert out['labelled'].numpy().tolist() == [True, True, False, False]

    wide = input_pipeline.preprocess(
        {'image': tf.constant(image), 'mask': tf.zeros((32, 32, 1), tf.uint8),
         'labelled_classes': tf.ones(4, tf.bool)},
        make_config('unused', image_size=32, hu_window=(-1000, 1000)))
    np.testing.assert_allclose(wide['image'].numpy()[0, :4, 0], [0, 0.45, 0.5, 0.575], atol=1e-6)


def test_eval_images_are_windowed_hu(data_dir, raw):
    batches = list(input_pipeline.eval_iterator(make_config(data_dir, hu_window=(-200, 300))))
    images = np.concatenate([b['image'].reshape(-1, 64, 64, 1) for b in batches])[:NUM_SLICES]
    hu = np.stack([ex['image'] for ex in raw]).astype(np.float32)
    expected = (np.clip(hu, -200, 300) + 200) / 500
    np.testing.assert_allclose(images, expected, atol=1e-6)
    masks = np.concatenate([b['mask'].reshape(-1, 64, 64) for b in batches])[:NUM_SLICES]
    np.testing.assert_array_equal(masks, np.stack([ex['mask'][..., 0] for ex in raw]))


def test_resize_is_nearest_for_masks(data_dir, raw):
    source = np.stack([ex['mask'][..., 0] for ex in raw]).astype(np.int32)
    up = list(input_pipeline.eval_iterator(make_config(data_dir, image_size=128)))
    up_masks = np.concatenate([b['mask'].reshape(-1, 128, 128) for b in up])[:NUM_SLICES]
    # Doubling with nearest neighbour repeats every pixel 2x2.
    np.testing.assert_array_equal(up_masks, source.repeat(2, axis=1).repeat(2, axis=2))

    down = list(input_pipeline.eval_iterator(make_config(data_dir, image_size=32)))
    down_masks = np.concatenate([b['mask'].reshape(-1, 32, 32) for b in down])[:NUM_SLICES]
    down_images = np.concatenate([b['image'].reshape(-1, 32, 32) for b in down])[:NUM_SLICES]
    for small, big in zip(down_masks, source):
        assert set(np.unique(small)) <= set(np.unique(big))  # only class ids of the source
    assert down_images.min() >= 0.0 and down_images.max() <= 1.0
    full = np.concatenate([b['image'].reshape(-1, 64, 64) for b in list(
        input_pipeline.eval_iterator(make_config(data_dir)))])[:NUM_SLICES]
    # Antialiased shrinking keeps the mean intensity.
    np.testing.assert_allclose(down_images.mean(axis=(1, 2)), full.mean(axis=(1, 2)), atol=0.01)


def test_eval_covers_every_slice_once_with_padding(data_dir, raw):
    config = make_config(data_dir)
    batches = list(input_pipeline.eval_iterator(config))
    assert len(batches) == 5  # 18 slices at global batch 4
    assert [int(b['valid'].sum()) for b in batches] == [4, 4, 4, 4, 2]
    assert set(batches[0]) == set(input_pipeline.EVAL_KEYS)
    shapes = {'image': (2, 2, 64, 64, 1), 'mask': (2, 2, 64, 64), 'labelled': (2, 2, 4),
              'valid': (2, 2), 'patient_id': (2, 2), 'slice_index': (2, 2), 'z_position': (2, 2),
              'pixel_spacing': (2, 2, 2), 'slice_thickness': (2, 2)}
    dtypes = {'image': np.float32, 'mask': np.int32, 'labelled': np.bool_, 'valid': np.bool_,
              'patient_id': np.int32, 'slice_index': np.int32, 'z_position': np.float32,
              'pixel_spacing': np.float32, 'slice_thickness': np.float32}
    for batch in batches:
        for key, shape in shapes.items():
            assert batch[key].shape == shape and batch[key].dtype == dtypes[key], key

    flat = {key: np.concatenate([b[key].reshape((-1,) + b[key].shape[2:]) for b in batches])
            for key in batches[0]}
    valid = flat['valid']
    assert valid.tolist() == [True] * 18 + [False] * 2
    seen = list(zip(flat['patient_id'][valid].tolist(), flat['slice_index'][valid].tolist()))
    assert seen == [(int(ex['patient_id']), int(ex['slice_index'])) for ex in raw]
    assert len(set(seen)) == NUM_SLICES
    np.testing.assert_allclose(flat['z_position'][valid], [ex['z_position'] for ex in raw])
    np.testing.assert_allclose(flat['pixel_spacing'][valid], [ex['pixel_spacing'] for ex in raw])
    np.testing.assert_array_equal(flat['labelled'][valid], [ex['labelled_classes'] for ex in raw])
    assert not flat['labelled'][valid][6:12, 3].any()  # patient 2 has no kidney annotation
    for key in flat:
        assert not flat[key][~valid].any(), key  # padding is zeros

    assert input_pipeline.num_eval_examples(config) == NUM_SLICES
    assert input_pipeline.num_eval_examples(config, 'patient_2') == 6
    patient_2 = input_pipeline.eval_iterator(config, 'patient_2')
    assert [int(b['valid'].sum()) for b in patient_2] == [4, 2]


def test_train_is_deterministic_and_reshuffles_every_epoch(data_dir, raw):
    config = make_config(data_dir)
    first = take(input_pipeline.train_iterator(config), 9)  # 36 examples: two epochs of 18
    for a, b in zip(first, take(input_pipeline.train_iterator(config), 9)):
        assert_batches_equal(a, b)
    other = take(input_pipeline.train_iterator(make_config(data_dir, seed=1)), 9)
    assert any(not np.array_equal(a['image'], b['image']) for a, b in zip(first, other))

    hu = np.stack([ex['image'] for ex in raw]).astype(np.float32)
    windowed = (np.clip(hu, -100, 400) + 100) / 500
    images = np.concatenate([b['image'].reshape(-1, 1, 64 * 64) for b in first])
    order = np.abs(images - windowed.reshape(1, NUM_SLICES, -1)).max(-1).argmin(-1).tolist()
    epochs = order[:NUM_SLICES], order[NUM_SLICES:]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(NUM_SLICES))  # each slice once
    assert epochs[0] != epochs[1] and epochs[0] != list(range(NUM_SLICES))


@pytest.mark.parametrize('start_step', [1, 4, 5, 13])
def test_train_resumes_exactly(data_dir, start_step):
    config = make_config(data_dir)
    fresh = take(input_pipeline.train_iterator(config), start_step + 2)
    resumed = take(input_pipeline.train_iterator(config, start_step=start_step), 2)
    assert_batches_equal(resumed[0], fresh[start_step])
    assert_batches_equal(resumed[1], fresh[start_step + 1])


def test_resuming_far_ahead_is_cheap(data_dir):
    config = make_config(data_dir)
    # 4M examples in: whole epochs are skipped by arithmetic, so this returns at once.
    batch = next(input_pipeline.train_iterator(config, start_step=1_000_000))
    assert batch['image'].shape == (2, 2, 64, 64, 1)


def test_batch_size_must_split_over_devices(data_dir):
    with pytest.raises(input_pipeline.DatasetError,
                       match='^batch_size 3 is not divisible by the 2 devices$'):
        input_pipeline.train_iterator(make_config(data_dir, batch_size=3))
    with pytest.raises(ValueError, match='image_size 48'):
        input_pipeline.eval_iterator(make_config(data_dir, image_size=48))


def test_bad_split(data_dir):
    config = make_config(data_dir, train_split='patient_1+patient_99')
    with pytest.raises(input_pipeline.DatasetError) as err:
        input_pipeline.load_builder(config)
    message = str(err.value)
    assert isinstance(err.value, ValueError)
    assert '\n' not in message and "'patient_99'" in message
    assert 'patient_1, patient_2, patient_3' in message
    with pytest.raises(ValueError, match='patient_99'):
        input_pipeline.train_iterator(config)
    with pytest.raises(input_pipeline.DatasetError, match='patient_7'):
        input_pipeline.eval_iterator(make_config(data_dir), 'patient_7[:50%]')
    with pytest.raises(input_pipeline.DatasetError, match='percent slice'):
        input_pipeline.num_eval_examples(make_config(data_dir), 'patient_1[:200%]')


def test_real_data_missing(tmp_path):
    config = make_config(str(tmp_path), dataset='ircad/real')
    with pytest.raises(input_pipeline.DatasetNotFoundError) as err:
        input_pipeline.load_builder(config)
    message = str(err.value)
    assert isinstance(err.value, ValueError) and '\n' not in message
    assert (f'tfds build fcn_jax/datasets/ircad --config real --manual_dir DIR '
            f'--data_dir {tmp_path}') in message
    with pytest.raises(input_pipeline.DatasetNotFoundError):
        input_pipeline.train_iterator(config)
    with pytest.raises(input_pipeline.DatasetNotFoundError, match='configs real, phantom') as err:
        input_pipeline.load_builder(make_config(str(tmp_path), dataset='ircad/nope'))
    assert '\n' not in str(err.value)


def test_phantom_is_built_on_first_use(tmp_path, monkeypatch):
    # Shrink the registered `phantom` config so that building it takes a moment.
    tiny = dict(image_size=32, num_patients=2, num_slices=3, kidney_patients=(1,))
    for field, value in tiny.items():
        monkeypatch.setattr(idb.PHANTOM, field, value)
    config = make_config(str(tmp_path), dataset='ircad/phantom', train_split='patient_1',
                         eval_split='patient_2', image_size=32)
    builder = input_pipeline.load_builder(config)
    assert builder.is_prepared() and set(builder.info.splits) == {'patient_1', 'patient_2'}
    assert next(input_pipeline.train_iterator(config))['image'].shape == (2, 2, 32, 32, 1)
    assert input_pipeline.num_eval_examples(config) == 3


def test_describe_batch(data_dir):
    batch = list(input_pipeline.eval_iterator(make_config(data_dir)))[-1]
    text = input_pipeline.describe_batch(batch)
    lines = text.splitlines()
    image_line = next(line for line in lines if line.startswith('image '))
    assert 'float32' in image_line and '[2, 2, 64, 64, 1]' in image_line and 'min 0' in image_line
    assert any(line.startswith('valid ') and 'min False' in line for line in lines)
    histogram = lines[-1]
    assert '2 valid of 4 examples' in histogram
    for name in ('background', 'liver', 'bone', 'kidney'):
        assert name in histogram
    shares = [float(s.rstrip('%')) for s in histogram.split(':', 1)[1].split()[1::2]]
    assert abs(sum(shares) - 100) < 0.05
