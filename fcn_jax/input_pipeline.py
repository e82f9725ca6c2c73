"""Input pipeline: the `ircad` TFDS slices, windowed and resized on the host with tf.data.

Batches are dicts of numpy arrays with a leading local-device axis, ready for
`flax.jax_utils.prefetch_to_device` and a pmapped step:

- train (`train_iterator`): `image` float32 [D, B, H, W, C] in [0, 1], `mask` int32
  [D, B, H, W] class ids, `labelled` bool [D, B, 4] (which classes the slice's patient
  has annotated), `valid` bool [D, B] (all True).
- eval (`eval_iterator`): the same, plus `patient_id` int32 [D, B], `slice_index` int32
  [D, B], `z_position` float32 [D, B], `pixel_spacing` float32 [D, B, 2] and
  `slice_thickness` float32 [D, B]; the last batch is padded with `valid` False.

D is `jax.local_device_count()`, B the per-device batch
(`config.batch_size // jax.device_count()`). Each process reads its own even share
of a split. Augmentation is not done here: it runs on the device (`fcn_jax.augment`).

Config fields read: `dataset`, `data_dir`, `train_split`, `eval_split`, `image_size`,
`hu_window`, `input_channels`, `batch_size`, `seed`, `shuffle_buffer`.
"""

from collections.abc import Iterator, Sequence
import math
import re
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from fcn_jax.datasets import ircad  # registers the `ircad` builder

Batch = dict[str, np.ndarray]

DEFAULT_HU_WINDOW = (-100.0, 400.0)
TRAIN_KEYS = ('image', 'mask', 'labelled', 'valid')
EVAL_KEYS = TRAIN_KEYS + ('patient_id', 'slice_index', 'z_position', 'pixel_spacing',
                          'slice_thickness')
_ENCODED = ('image', 'mask')  # features whose zlib bytes are decoded only after the skip


class DatasetError(ValueError):
    """A dataset, split or input setting that cannot be used; the message is one line."""


class DatasetNotFoundError(DatasetError):
    """The dataset is not built in the data dir; the message says how to build it."""


# --------------------------------------------------------------------------
# Builder and splits
# --------------------------------------------------------------------------


def load_builder(config: ml_collections.ConfigDict,
                 splits: Sequence[str] | None = None) -> tfds.core.DatasetBuilder:
    """The TFDS builder of `config.dataset`, built if it is the phantom, with `splits` checked.

    `splits` defaults to `config.train_split` and `config.eval_split` (those set).
    Raises DatasetNotFoundError when the real data is not built (the message gives the
    `tfds build` command), DatasetError for a split the dataset does not have.
    """
    name, data_dir = config.dataset, config.get('data_dir')
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except (tfds.core.registered.DatasetNotFoundError, ValueError) as err:
        raise DatasetNotFoundError(_not_found(name, data_dir, err)) from None
    if not builder.is_prepared():
        if getattr(builder.builder_config, 'source', None) == 'phantom':
            logging.info('Building %s in %s (synthetic, no download).', name, builder.data_dir_root)
            builder.download_and_prepare()
        else:
            raise DatasetNotFoundError(_build_hint(builder, name))
    if splits is None:
        splits = [config[key] for key in ('train_split', 'eval_split') if config.get(key)]
    for split in splits:
        num_examples(builder, split)
    return builder


def _not_found(name: str, data_dir: str | None, err: BaseException) -> str:
    base = name.split('/')[0].split(':')[0]
    try:
        configs = list(tfds.builder_cls(base).builder_configs)
    except (tfds.core.registered.DatasetNotFoundError, ValueError):
        configs = []
    if '/' in name and configs:
        return (f'dataset {name!r} not found: {base} has the configs {", ".join(configs)}, and no '
                f'other config is built in {data_dir or tfds.core.constants.DATA_DIR}')
    return f'dataset {name!r} not found: {_first_line(err)}'


def _build_hint(builder: tfds.core.DatasetBuilder, name: str) -> str:
    root = builder.data_dir_root
    if builder.name == 'ircad':
        command = (f'tfds build fcn_jax/datasets/ircad --config {builder.builder_config.name} '
                   f'--manual_dir DIR --data_dir {root}')
        return (f'dataset {name} is not built in {root}; build it with `{command}` '
                '(DIR: a folder with the IRCAD 3Dircadb1.zip archive or its patient folders)')
    return (f'dataset {name} is not built in {root}; build it with '
            f'`tfds build {name} --data_dir {root}`')


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _one_line(err: BaseException) -> str:
    return ' '.join(str(err).split()) or type(err).__name__


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', text)]


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
    """The number of examples of a TFDS split string; DatasetError for a bad split."""
    available = sorted(builder.info.splits.keys(), key=_natural_key)
    if not isinstance(split, str) or not split.strip():
        raise DatasetError(f'no split given (got {split!r}); '
                           f'available splits: {", ".join(available)}')
    dataset = builder.name
    if builder.builder_config:
        dataset += f'/{builder.builder_config.name}'
    for part in split.split('+'):
        base = part.split('[')[0].strip()
        if base not in available and base != 'all':
            within = '' if part.strip() == split.strip() else f' (in {split!r})'
            raise DatasetError(f'split {base!r}{within} is not in {dataset}; '
                               f'available splits: {", ".join(available)}')
    try:
        count = builder.info.splits[split].num_examples
    except (ValueError, KeyError, AssertionError) as err:
        raise DatasetError(f'bad split {split!r} for {dataset}: {_one_line(err)}') from None
    if count <= 0:
        raise DatasetError(f'split {split!r} of {dataset} has no examples')
    return count


def num_eval_examples(config: ml_collections.ConfigDict, split: str | None = None) -> int:
    """Slices in the eval split (all processes together, without padding)."""
    return num_examples(load_builder(config, splits=()), split or config.eval_split)


def _process_split(builder: tfds.core.DatasetBuilder, split: str) -> tuple[str, list[int]]:
    """This process's share of `split`, and the number of examples of every process's share."""
    shares = tfds.even_splits(split, n=jax.process_count(), drop_remainder=False)
    counts = [builder.info.splits[share].num_examples for share in shares]
    return shares[jax.process_index()], counts


# --------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------


def check_config(config: ml_collections.ConfigDict) -> None:
    """DatasetError for input knobs that cannot work."""
    size = config.image_size
    if not isinstance(size, int) or size <= 0 or size % 32:
        raise DatasetError(f'image_size {size} is not a positive multiple of 32')
    low, high = _hu_window(config)
    if not low < high:
        raise DatasetError(f'hu_window {config.hu_window} must be (low, high) with low < high')
    if config.get('input_channels', 1) not in (1, 3):
        raise DatasetError(f'input_channels {config.input_channels} must be 1 or 3')
    local_batch_size(config)


def local_batch_size(config: ml_collections.ConfigDict) -> int:
    """This process's batch (`batch_size / process_count`); DatasetError unless it splits evenly."""
    batch, devices = config.batch_size, jax.device_count()
    if batch <= 0 or batch % devices:
        raise DatasetError(f'batch_size {batch} is not divisible by the {devices} devices')
    return batch // jax.process_count()


def _hu_window(config: ml_collections.ConfigDict) -> tuple[float, float]:
    low, high = config.get('hu_window', None) or DEFAULT_HU_WINDOW
    return float(low), float(high)


def preprocess_image(hu: tf.Tensor, config: ml_collections.ConfigDict) -> tf.Tensor:
    """HU slice [H, W, 1] -> float32 [S, S, C] in [0, 1], S = `image_size`.

    The HU image is clipped to `hu_window`, scaled to [0, 1] and resized (bilinear,
    antialiased when shrinking); C = `input_channels` (the slice replicated).
    """
    size = config.image_size
    low, high = _hu_window(config)
    image = tf.cast(hu, tf.float32)
    image = (tf.clip_by_value(image, low, high) - low) / (high - low)
    source_size = image.shape[0]
    if (image.shape[0], image.shape[1]) != (size, size):
        image = tf.image.resize(image, (size, size), method='bilinear',
                                antialias=source_size is None or size < source_size)
        image = tf.clip_by_value(image, 0.0, 1.0)
    image = tf.ensure_shape(image, (size, size, 1))
    if config.get('input_channels', 1) == 3:
        image = tf.tile(image, (1, 1, 3))
    return image


def preprocess(example: dict[str, tf.Tensor],
               config: ml_collections.ConfigDict) -> dict[str, tf.Tensor]:
    """One decoded slice -> `image` float32 [S, S, C] in [0, 1], `mask` int32 [S, S], `labelled`.

    The mask is resized with nearest neighbour, so it only holds class ids of the source.
    """
    size = config.image_size
    mask = example['mask']
    if (mask.shape[0], mask.shape[1]) != (size, size):
        mask = tf.image.resize(mask, (size, size), method='nearest')
    mask = tf.cast(tf.ensure_shape(mask, (size, size, 1))[..., 0], tf.int32)
    return {'image': preprocess_image(example['image'], config), 'mask': mask,
            'labelled': tf.cast(example['labelled_classes'], tf.bool)}


def _records(builder: tfds.core.DatasetBuilder, split: str) -> tf.data.Dataset:
    """The split in its stored order, with image and mask left as zlib bytes."""
    return builder.as_dataset(
        split=split, shuffle_files=False,
        decoders={key: tfds.decode.SkipDecoding() for key in _ENCODED},
        read_config=tfds.ReadConfig(interleave_cycle_length=1, add_tfds_id=False))


def _decode(builder: tfds.core.DatasetBuilder):
    features = builder.info.features

    def decode(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {**example, **{key: features[key].decode_example(example[key]) for key in _ENCODED}}

    return decode


def _shard(local_batch: int):
    """Reshapes [local_batch, ...] to [local_devices, per_device, ...]."""
    devices = jax.local_device_count()

    def shard(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        per_device = local_batch // devices
        return {key: tf.reshape(value, [devices, per_device] + value.shape[1:].as_list())
                for key, value in batch.items()}

    return shard


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    return options


# --------------------------------------------------------------------------
# Iterators
# --------------------------------------------------------------------------


def train_dataset(config: ml_collections.ConfigDict, *, start_step: int = 0) -> tf.data.Dataset:
    """The infinite training batches as a tf.data.Dataset (see `train_iterator`)."""
    check_config(config)
    if start_step < 0:
        raise ValueError(f'start_step must be >= 0, got {start_step}')
    builder = load_builder(config, splits=(config.train_split,))
    local_batch = local_batch_size(config)
    split, counts = _process_split(builder, config.train_split)
    count = counts[jax.process_index()]
    if count == 0:
        raise DatasetError(f'split {config.train_split!r} leaves no examples for process '
                           f'{jax.process_index()} of {jax.process_count()}')
    records = _records(builder, split)
    buffer = max(1, int(config.get('shuffle_buffer', 1024)))
    base_seed = tf.constant([int(config.get('seed', 0)), jax.process_index()], tf.int64)

    def epoch(index: tf.Tensor) -> tf.data.Dataset:
        # Each epoch has its own stateless seed, so that resuming can start at any epoch.
        key = tf.random.experimental.stateless_fold_in(base_seed, index)
        seed = tf.random.stateless_uniform([], key, minval=0, maxval=2**31 - 1, dtype=tf.int64)
        return records.shuffle(buffer, seed=seed, reshuffle_each_iteration=False)

    # Skip whole epochs arithmetically and the rest of the way as undecoded records.
    skipped = start_step * local_batch
    ds = tf.data.Dataset.range(skipped // count, 2**62).flat_map(epoch).skip(skipped % count)
    decode = _decode(builder)

    def prepare(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = preprocess(decode(example), config)
        out['valid'] = tf.constant(True)
        return out

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True).map(_shard(local_batch))
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def train_iterator(config: ml_collections.ConfigDict, *, start_step: int = 0) -> Iterator[Batch]:
    """Infinite, deterministic (given `config.seed`) training batches, reshuffled every epoch.

    Resumable: the first batch after `start_step=n` equals batch n (0-based) of a fresh
    iterator. Whole epochs are skipped by arithmetic and the remainder as undecoded
    records, so resuming costs at most one pass over one epoch's serialized records.
    """
    return train_dataset(config, start_step=start_step).as_numpy_iterator()


def eval_dataset(config: ml_collections.ConfigDict, split: str | None = None) -> tf.data.Dataset:
    """One padded pass over the eval split as a tf.data.Dataset (see `eval_iterator`)."""
    check_config(config)
    split = split or config.eval_split
    builder = load_builder(config, splits=(split,))
    local_batch = local_batch_size(config)
    split, counts = _process_split(builder, split)
    # Every process yields the same number of batches, so pmapped steps stay in step.
    num_batches = max(math.ceil(n / local_batch) for n in counts)
    padding = num_batches * local_batch - counts[jax.process_index()]
    decode = _decode(builder)

    def prepare(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = preprocess(decode(example), config)
        out['valid'] = tf.constant(True)
        for key in EVAL_KEYS[len(TRAIN_KEYS):]:
            out[key] = example[key]
        return out

    ds = _records(builder, split).map(prepare, num_parallel_calls=tf.data.AUTOTUNE,
                                      deterministic=True)
    if padding:
        blank = {key: tf.zeros(spec.shape, spec.dtype) for key, spec in ds.element_spec.items()}
        ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat(padding))
    ds = ds.batch(local_batch, drop_remainder=True).map(_shard(local_batch))
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def eval_iterator(config: ml_collections.ConfigDict, split: str | None = None) -> Iterator[Batch]:
    """One pass, in dataset order, over every slice of `split` (default `config.eval_split`).

    The last batch is padded to full shape; padded examples are zeros with `valid` False.
    """
    return eval_dataset(config, split).as_numpy_iterator()


# --------------------------------------------------------------------------
# Inspection
# --------------------------------------------------------------------------


def describe_batch(batch: Batch) -> str:
    """Shape, dtype and range of each key, then the mask's class histogram (valid examples)."""
    lines = []
    width = max(len(key) for key in batch)
    for key in sorted(batch):
        value = np.asarray(batch[key])
        if value.size:
            low, high = value.min(), value.max()
            span = f'min {_number(low)}  max {_number(high)}'
        else:
            span = 'empty'
        lines.append(f'{key:<{width}}  {str(value.dtype):<8} {str(list(value.shape)):<22} {span}')
    if 'mask' in batch:
        mask = np.asarray(batch['mask'])
        if 'valid' in batch:
            valid = np.asarray(batch['valid'], bool)
            mask = mask[valid]
            which = f'{int(valid.sum())} valid of {valid.size} examples'
        else:
            which = f'{mask.shape[0] if mask.ndim else 0} examples'
        counts = np.bincount(mask.ravel().astype(np.int64), minlength=ircad.NUM_CLASSES)
        total = max(int(counts.sum()), 1)
        extra = [f'class {k}' for k in range(ircad.NUM_CLASSES, len(counts))]
        names = list(ircad.CLASS_NAMES) + extra
        shares = '  '.join(f'{name} {100 * c / total:.2f}%' for name, c in zip(names, counts))
        lines.append(f'mask classes ({which}, {total} pixels): {shares}')
    return '\n'.join(lines)


def _number(value: Any) -> str:
    if isinstance(value, (np.floating, float)):
        return f'{float(value):.4g}'
    return str(value)
