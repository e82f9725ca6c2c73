"""Input pipeline versus train step: images per second, to see which one is the bottleneck.

For each augment setting (none, flips, strong) the script measures:

- pipeline: host tf.data batches (`input_pipeline.train_iterator`: decode, HU window,
  resize, batch), put on the devices as in training (`prefetch_to_device`) and augmented
  there (`augment.augment_batch`, pmapped with per-device keys like the train step);
- step: the real pmapped train step (`train.pmapped_steps`) on batches already on the
  devices. The step runs the augmentation itself, as in training.

The host tf.data rate alone and the augmentation alone are shown for reference.
pipeline / step > 1 means the pipeline keeps up and the step is the bottleneck; < 1 means
the step waits for input. On a CPU both share the same cores, so each is timed alone.

  python benchmarks/input_pipeline.py
  python benchmarks/input_pipeline.py --dataset ircad/real --image_size 512 --width 1.0

The defaults (phantom, 256 px, the quickstart width) take about 2 minutes on 2 CPU cores;
the phantom dataset is built on first use.
"""

import argparse
import collections
import gc
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterator

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import logging  # noqa: E402
import flax  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from configs import quickstart  # noqa: E402
from fcn_jax import augment, config_checks, input_pipeline, train  # noqa: E402

WARMUP = 3  # untimed batches or steps before each measurement (compilation, tf.data autotune)
WINDOW = 5  # batches or steps per timed window
MIN_WINDOW_SECONDS = 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = quickstart.get_config()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dataset', default=defaults.dataset,
                        help='TFDS name (default: %(default)s)')
    parser.add_argument('--data_dir', default=None, help="TFDS data dir (default: TFDS's own)")
    parser.add_argument('--image_size', type=int, default=defaults.image_size,
                        help='pixels per side after resizing (default: %(default)s)')
    parser.add_argument('--batch_size', type=int, default=defaults.batch_size,
                        help='global batch (default: %(default)s)')
    parser.add_argument('--width', type=float, default=defaults.width_multiplier,
                        help='FCN width multiplier (default: %(default)s, the quickstart width)')
    parser.add_argument('--steps', type=int, default=20,
                        help=f'timed train steps (and at least as many batches) per measurement, '
                        f'in windows of {WINDOW}; the fastest window counts (default: %(default)s)')
    parser.add_argument('--modes', default=','.join(augment.MODES),
                        help='augment settings to measure (default: %(default)s)')
    args = parser.parse_args(argv)
    if args.steps < WINDOW:
        parser.error(f'--steps must be >= {WINDOW}')
    modes = [m.strip() for m in args.modes.split(',') if m.strip()]
    unknown = [m for m in modes if m not in augment.MODES]
    if unknown or not modes:
        parser.error(f'--modes: choose from {", ".join(augment.MODES)}')
    args.modes = modes
    return args


def make_config(args: argparse.Namespace, mode: str = 'none') -> ml_collections.ConfigDict:
    """The quickstart config at the benchmark's dataset, size, batch, width and augment mode."""
    config = quickstart.get_config()
    config.dataset = args.dataset
    config.data_dir = args.data_dir
    config.image_size = args.image_size
    config.batch_size = args.batch_size
    config.width_multiplier = args.width
    config.augment = mode
    config_checks.validate(config)
    input_pipeline.check_config(config)
    return config


def timed(step: Callable[[], object], finish: Callable[[object], None], calls: int,
          windows: int) -> float:
    """Calls per second of `step`: the fastest of `windows` timed windows after WARMUP calls.

    A window makes at least `calls` calls and lasts at least MIN_WINDOW_SECONDS; `finish`
    waits for a result. Taking the fastest window discounts other load on the machine.
    """
    for _ in range(WARMUP):
        result = step()
    finish(result)
    best = 0.0
    for _ in range(windows):
        count, start = 0, time.perf_counter()
        while count < calls or time.perf_counter() - start < MIN_WINDOW_SECONDS:
            result = step()
            count += 1
        finish(result)
        best = max(best, count / (time.perf_counter() - start))
    return best


def block(tree: object) -> None:
    jax.block_until_ready(tree)


def host_rate(config: ml_collections.ConfigDict, windows: int) -> float:
    """Images/s of the host tf.data pipeline alone (numpy batches, nothing on the device)."""
    batches = input_pipeline.train_iterator(config)
    return config.batch_size * timed(lambda: next(batches), lambda _: None, WINDOW, windows)


def pmapped_augment(mode: str) -> Callable:
    """`augment.augment_batch` mapped over the local devices with per-device keys, like train.py."""

    def run(rng: jax.Array, image: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        rng = jax.random.fold_in(rng, jax.lax.axis_index(train.AXIS))
        return augment.augment_batch(rng, image, mask, mode)

    return jax.pmap(run, axis_name=train.AXIS, in_axes=(None, 0, 0))


def pipeline_rate(config: ml_collections.ConfigDict, windows: int) -> float:
    """Images/s of host batches put on the devices and augmented there."""
    p_augment = pmapped_augment(config.augment)
    batches = flax.jax_utils.prefetch_to_device(input_pipeline.train_iterator(config),
                                                config.prefetch)
    rng = jax.random.PRNGKey(0)
    counter = iter(range(1 << 62))
    in_flight = collections.deque(maxlen=2)  # bounds the queue of dispatched augmentations

    def step() -> object:
        if len(in_flight) == in_flight.maxlen:
            block(in_flight[0])
        batch = next(batches)
        out = p_augment(jax.random.fold_in(rng, next(counter)), batch['image'], batch['mask'])
        in_flight.append(out)
        return out

    return config.batch_size * timed(step, block, WINDOW, windows)


def device_batches(config: ml_collections.ConfigDict, count: int = 2) -> list[dict]:
    """`count` real unaugmented batches, already on the devices."""
    batches = flax.jax_utils.prefetch_to_device(input_pipeline.train_iterator(config), 1)
    out = [next(batches) for _ in range(count)]
    block(out)
    return out


def augment_rate(config: ml_collections.ConfigDict, batches: list[dict], windows: int) -> float:
    """Images/s of the on-device augmentation alone, on batches already on the devices."""
    p_augment = pmapped_augment(config.augment)
    rng = jax.random.PRNGKey(0)
    cycle = _cycle(batches)

    def step() -> object:
        index, batch = next(cycle)
        return p_augment(jax.random.fold_in(rng, index), batch['image'], batch['mask'])

    return config.batch_size * timed(step, block, WINDOW, windows)


def step_rate(config: ml_collections.ConfigDict, batches: list[dict], windows: int) -> float:
    """Images/s of the real pmapped train step on batches already on the devices."""
    model = train.create_model(config)
    init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    state = train.create_train_state(init_rng, config, model)
    p_train, _, _ = train.pmapped_steps(config)
    cycle = _cycle(batches)

    def step() -> object:
        nonlocal state
        index, batch = next(cycle)
        state, step_metrics = p_train(state, batch, jax.random.fold_in(step_rng, index))
        return state.params, step_metrics

    return config.batch_size * timed(step, block, WINDOW, windows)


def _cycle(batches: list[dict]) -> Iterator[tuple[int, dict]]:
    index = 0
    while True:
        yield index, batches[index % len(batches)]
        index += 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.set_verbosity(logging.ERROR)
    tfds.disable_progress_bar()
    tf.config.set_visible_devices([], 'GPU')  # tf.data stays on the host
    try:
        config = make_config(args)
        start = time.perf_counter()
        builder = input_pipeline.load_builder(config, splits=(config.train_split,))
    except (config_checks.ConfigError, input_pipeline.DatasetError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    ready = time.perf_counter() - start
    windows = args.steps // WINDOW
    examples = input_pipeline.num_examples(builder, config.train_split)
    source = builder.info.features['image'].shape[0]
    print(f'{args.dataset}: {examples} training slices of {source} px (ready in {ready:.1f} s); '
          f'image_size {args.image_size}, batch {args.batch_size}, width {args.width}, '
          f'{jax.device_count()} {jax.default_backend()} device(s)')
    print(f'each rate: the fastest of {windows} windows ({2 * windows} for the host pipelines) '
          f'of {WINDOW}+ batches or steps and {MIN_WINDOW_SECONDS}+ s, after {WARMUP} warmup calls',
          flush=True)

    host = host_rate(config, 2 * windows)
    print(f'host tf.data alone: {host:.1f} img/s', flush=True)
    batches = device_batches(config)
    rows = []
    for mode in args.modes:
        mode_config = make_config(args, mode)
        augmented = augment_rate(mode_config, batches, windows)
        pipeline = pipeline_rate(mode_config, 2 * windows)
        gc.collect()  # stops the pipeline's tf.data threads before the step is timed
        step = step_rate(mode_config, batches, windows)
        rows.append((mode, augmented, pipeline, step))
        print(f'{mode}: augment {augmented:.1f}, pipeline {pipeline:.1f}, step {step:.1f} img/s',
              flush=True)

    print()
    header = ('augment', 'augment img/s', 'pipeline img/s', 'step img/s', 'pipeline/step',
              'host/step', 'bottleneck')
    lines = [header]
    for mode, augmented, pipeline, step in rows:
        ratio = pipeline / step
        lines.append((mode, f'{augmented:.1f}', f'{pipeline:.1f}', f'{step:.1f}', f'{ratio:.2f}',
                      f'{host / step:.2f}', 'train step' if ratio >= 1 else 'input pipeline'))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print('  '.join(cell.ljust(w) if i == 0 or i == len(header) - 1 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(line, widths))).rstrip())
    print(f'\nhost tf.data alone: {host:.1f} img/s (decode, window, resize, batch; no device).')
    print('pipeline = host tf.data + transfer + on-device augmentation; step = the pmapped train '
          'step (augmentation included) on batches already on the device.')
    print('pipeline/step > 1: the input keeps up and the train step is the bottleneck.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
