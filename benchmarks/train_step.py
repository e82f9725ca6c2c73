"""Train-step time of fcn-jax's FCN-8s against the same network in plain PyTorch.

Both sides train the same FCN-8s (`benchmarks/torch_fcn.py` mirrors `fcn_jax.models`:
VGG16 encoder at `--width`, fc6 7x7 and fc7 1x1 with dropout 0.5, zero-initialised score
layers, learned 2x bilinear upsamplings, fixed bilinear x8 upsampling) on the same numpy
batches, with pixel cross-entropy over 4 classes (every class labelled, so the marginal
cross-entropy of `fcn_jax.losses` is the plain one) and Adam at lr 3e-4.

- JAX: the project's own pmapped train step (`fcn_jax.train.pmapped_steps`) on a config
  derived from configs/default.py (augment 'none'), batches put on the devices through
  `flax.jax_utils.prefetch_to_device` as in `train_and_evaluate`: a host-to-device copy
  every step.
- PyTorch: `torch.from_numpy` on the same batch every step, forward, backward and
  `torch.optim.Adam` step, in eager mode with default settings (NCHW, Adam's default
  implementation); `--torch_channels_last` and `--torch_fused_adam` tune it.

The torch model gets the JAX initial parameters, and the script checks that both compute
the same logits and loss (dropout off) before timing. Compilation and warm-up steps are
excluded; then JAX and PyTorch alternate (`--steps` steps each) for `--repeats` rounds,
and the script prints the median time per step of each and `jax_over_torch_time`.

Threads: torch gets `--threads` intra-op threads (default: the CPU cores this process may
use), and XLA's CPU client reads the same number from the NPROC environment variable, set
here before jax starts.

  python benchmarks/train_step.py                         # CPU defaults, about 1 minute
  python benchmarks/train_step.py --device gpu --image_size 512 --width 1 --batch_size 8
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Any, Iterator

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_CLASSES = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--image_size', type=int, default=128, help='multiple of 32')
    parser.add_argument('--width', type=float, default=0.25, help='VGG16 width multiplier')
    parser.add_argument('--batch_size', type=int, default=4)
    parser.add_argument('--steps', type=int, default=5, help='steps per side in each repeat')
    parser.add_argument('--repeats', type=int, default=10, help='rounds of JAX then PyTorch')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps per side')
    parser.add_argument('--device', choices=('cpu', 'gpu'), default='cpu')
    parser.add_argument('--half_precision', action='store_true',
                        help='bfloat16 compute (config.half_precision, torch.autocast); GPU only')
    parser.add_argument('--threads', type=int, default=0,
                        help='CPU threads for torch and XLA (0: the cores this process may use)')
    parser.add_argument('--torch_channels_last', action='store_true',
                        help='run the torch model in channels_last (NHWC) memory format')
    parser.add_argument('--torch_fused_adam', action='store_true',
                        help='torch.optim.Adam(fused=True) instead of the default implementation')
    args = parser.parse_args(argv)
    if args.half_precision and args.device != 'gpu':
        parser.error('--half_precision is for --device gpu only')
    if args.image_size % 32:
        parser.error('--image_size must be a multiple of 32')
    return args


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def configure_environment(device: str, threads: int) -> int:
    """Platform and thread count for XLA; must run before jax is imported. Returns threads."""
    threads = threads or usable_cores()
    os.environ['NPROC'] = str(threads)  # XLA's CPU client sizes its thread pools from this
    os.environ['JAX_PLATFORMS'] = 'cuda' if device == 'gpu' else 'cpu'
    if device == 'gpu':
        # One card for both frameworks (torch uses one; the peak is per card); leave room
        # on it for torch, in the same process.
        os.environ.setdefault('CUDA_VISIBLE_DEVICES', '0')
        os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    for path in (REPO, REPO / 'benchmarks'):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    return threads


def check_gpu(need_torch: bool = True) -> None:
    """Exits with one line, not a traceback, when JAX (or torch) cannot use an NVIDIA GPU."""
    import jax

    problems = []
    try:
        jax.devices()
    except (RuntimeError, AssertionError):  # JAX_PLATFORMS=cuda and no usable CUDA backend
        problems.append('JAX finds no CUDA GPU (install it with pip install -e ".[gpu]")')
    if need_torch:
        import torch

        if not torch.cuda.is_available():
            problems.append(f'torch {torch.__version__} cannot use CUDA (install a CUDA build)')
    if problems:
        raise SystemExit('--device gpu: ' + '; '.join(problems))


def make_batches(image_size: int, batch_size: int, num_devices: int,
                 count: int = 4) -> list[dict]:
    """`count` random host batches laid out as `input_pipeline.train_iterator` yields them."""
    import numpy as np

    rng = np.random.default_rng(0)
    d, b, s = num_devices, batch_size // num_devices, image_size
    return [{
        'image': rng.random((d, b, s, s, 1), dtype=np.float32),
        'mask': rng.integers(0, NUM_CLASSES, (d, b, s, s), dtype=np.int32),
        'labelled': np.ones((d, b, NUM_CLASSES), bool),
        'valid': np.ones((d, b), bool),
    } for _ in range(count)]


def benchmark_config(image_size: int, width: float, batch_size: int, half_precision: bool):
    """configs/default.py for FCN-8s at these sizes: Adam at a constant 3e-4, plain CE."""
    from configs import default

    config = default.get_config()
    config.update(dict(
        model='fcn8s', image_size=image_size, width_multiplier=width, batch_size=batch_size,
        input_channels=1, augment='none', batch_norm=False, dropout_rate=0.5,
        learn_final_upsample=False, half_precision=half_precision, optimizer='adam',
        learning_rate=3e-4, weight_decay=0.0, schedule='constant', warmup_fraction=0.0,
        loss='ce', class_weights=(1.0,) * NUM_CLASSES))
    return config


def prefetched(host_batches: list[dict], size: int) -> Iterator[dict]:
    """Host batches cycled forever, put on the devices as `train_and_evaluate` does."""
    import itertools

    import flax

    return flax.jax_utils.prefetch_to_device(itertools.cycle(host_batches), size)


def torch_batch(batch: dict, device: Any, channels_last: bool = False) -> tuple[Any, Any]:
    """(image NCHW float32, mask int64) torch tensors from a host batch laid out [D, B, ...].

    For a GPU the batch is staged in pinned memory first, as `DataLoader(pin_memory=True)`
    does, so that the copy to the device runs asynchronously (JAX's `device_put` is too).
    """
    import torch

    image = torch.from_numpy(batch['image'].reshape((-1,) + batch['image'].shape[2:]))
    mask = torch.from_numpy(batch['mask'].reshape((-1,) + batch['mask'].shape[2:]))
    if torch.device(device).type == 'cuda':
        image, mask = image.pin_memory(), mask.pin_memory()
    image = image.to(device, non_blocking=True).permute(0, 3, 1, 2)
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    mask = mask.to(device, non_blocking=True).long()
    return image, mask


def check_same_function(model, params: dict, config, host_batch: dict, torch_device: Any,
                        autocast: Any, tolerance: float) -> str:
    """Eval-mode logits and loss of both models on one batch; raises if they differ.

    The zero-initialised score layers are replaced by random ones first, so that the
    logits depend on the whole network.
    """
    import jax
    import numpy as np
    import torch
    import torch.nn.functional as F

    import torch_fcn
    from fcn_jax import train

    params = jax.tree.map(np.asarray, jax.device_get(params))
    rng = np.random.default_rng(2)
    for name in ('score_fr', 'score_pool4', 'score_pool3'):
        kernel = params[name]['kernel']
        params[name] = dict(params[name], kernel=(
            rng.standard_normal(kernel.shape).astype(np.float32) * 0.1))
    net = torch_fcn.FCN8s(config.width_multiplier, config.input_channels)
    torch_fcn.load_flax_params(net, params)
    net = net.to(torch_device).eval()
    image, mask = torch_batch(host_batch, torch_device)
    with torch.no_grad(), autocast:
        logits = net(image).float()
        torch_loss = float(F.cross_entropy(logits, mask))
    torch_logits = logits.permute(0, 2, 3, 1).cpu().numpy()
    images = host_batch['image'].reshape((-1,) + host_batch['image'].shape[2:])
    masks = host_batch['mask'].reshape((-1,) + host_batch['mask'].shape[2:])
    jax_logits = np.asarray(jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))(
        params, images))
    jax_loss = float(train._loss(config, jax_logits, {
        'mask': masks, 'labelled': np.ones((masks.shape[0], NUM_CLASSES), bool)}).mean())
    scale = float(np.abs(jax_logits).max())
    diff = float(np.abs(jax_logits - torch_logits).max())
    if diff > tolerance * max(scale, 1.0) or abs(jax_loss - torch_loss) > tolerance * jax_loss:
        raise SystemExit(f'the JAX and PyTorch models compute different functions: '
                         f'max |logits difference| {diff:.3g} (max |logit| {scale:.3g}), '
                         f'loss {jax_loss:.6f} vs {torch_loss:.6f}')
    return (f'logits {jax_logits.shape}, max |jax - torch| {diff:.2e} (max |logit| {scale:.2e}), '
            f'loss jax {jax_loss:.6f} torch {torch_loss:.6f}')


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = configure_environment(args.device, args.threads)

    import jax
    import numpy as np
    import torch
    import torch.nn.functional as F

    import torch_fcn
    from fcn_jax import train

    if args.device == 'gpu':
        check_gpu()
    torch.set_num_threads(threads)
    torch_device = torch.device('cuda' if args.device == 'gpu' else 'cpu')
    if args.device == 'gpu':
        torch.backends.cudnn.benchmark = True  # XLA autotunes its convolutions too
        torch.set_float32_matmul_precision('high')  # TF32, like XLA's default precision
    num_devices = jax.local_device_count()
    if args.batch_size % num_devices:
        raise SystemExit(f'--batch_size {args.batch_size} must divide over {num_devices} devices')

    print(f'machine: {cpu_model()}, {usable_cores()} cores usable ({os.cpu_count()} online); '
          f'{threads} threads for torch (set_num_threads) and XLA (NPROC)')
    print(f'jax {jax.__version__} ({jax.devices()[0].device_kind} x{num_devices}), '
          f'torch {torch.__version__} ({torch_device}), numpy {np.__version__}, '
          f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')
    if args.device == 'gpu':
        print(f'gpu: {torch.cuda.get_device_name(torch_device)}')
    torch_setup = ', '.join(['channels_last' if args.torch_channels_last else 'NCHW',
                             'fused Adam' if args.torch_fused_adam else 'default Adam'])
    print(f'FCN-8s, image {args.image_size}x{args.image_size}x1, width {args.width}, '
          f'batch {args.batch_size}, {"bfloat16" if args.half_precision else "float32"} compute; '
          f'torch {torch_setup}; {args.steps} steps x {args.repeats} repeats per side after '
          f'{args.warmup} warm-up steps')

    # JAX: the project's train step.
    config = benchmark_config(args.image_size, args.width, args.batch_size, args.half_precision)
    model = train.create_model(config)
    state = train.create_train_state(jax.random.PRNGKey(0), config, model)
    p_train, _, _ = train.pmapped_steps(config)
    step_rng = jax.random.PRNGKey(1)
    host_batches = make_batches(args.image_size, args.batch_size, num_devices)
    batches = prefetched(host_batches, config.prefetch)

    # PyTorch: the same network, from the same initial parameters.
    net = torch_fcn.FCN8s(args.width, config.input_channels)
    jax_count = sum(int(x.size) for x in jax.tree.leaves(state.params))
    torch_count = torch_fcn.count_params(net)
    print(f'parameters: jax {jax_count:,}, torch {torch_count:,}')
    if jax_count != torch_count:
        raise SystemExit('parameter counts differ: the two models are not the same')
    torch_fcn.load_flax_params(net, jax.device_get(state.params))
    net = net.to(torch_device)
    if args.torch_channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate,
                                 fused=True if args.torch_fused_adam else None)
    autocast = torch.autocast(torch_device.type, dtype=torch.bfloat16,
                              enabled=args.half_precision)
    tolerance = 5e-2 if args.half_precision else 2e-2 if args.device == 'gpu' else 1e-3
    print('same function:', check_same_function(model, state.params, config, host_batches[0],
                                                torch_device, autocast, tolerance))

    step = 0

    def jax_steps(n: int) -> float:
        nonlocal state, step
        start = time.perf_counter()
        for _ in range(n):
            step += 1
            state, metrics = p_train(state, next(batches), jax.random.fold_in(step_rng, step))
        jax.block_until_ready((state, metrics))
        return (time.perf_counter() - start) / n

    def torch_sync() -> None:
        if torch_device.type == 'cuda':
            torch.cuda.synchronize(torch_device)

    net.train()
    torch_step = 0

    def torch_steps(n: int) -> float:
        nonlocal torch_step
        torch_sync()
        start = time.perf_counter()
        for _ in range(n):
            image, mask = torch_batch(host_batches[torch_step % len(host_batches)], torch_device,
                                      args.torch_channels_last)
            torch_step += 1
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                logits = net(image)
            loss = F.cross_entropy(logits.float(), mask)
            loss.backward()
            optimizer.step()
        torch_sync()
        return (time.perf_counter() - start) / n

    start = time.perf_counter()
    jax_steps(1)
    print(f'jax: compile and first step {time.perf_counter() - start:.1f} s')
    jax_steps(args.warmup)
    torch_steps(1 + args.warmup)

    jax_times, torch_times = [], []
    for r in range(args.repeats):
        jax_times.append(jax_steps(args.steps))
        torch_times.append(torch_steps(args.steps))
        print(f'repeat {r + 1:2d}: jax {jax_times[-1] * 1e3:8.1f} ms/step   '
              f'torch {torch_times[-1] * 1e3:8.1f} ms/step')
    jax_median, torch_median = statistics.median(jax_times), statistics.median(torch_times)
    print(f'jax median   {jax_median * 1e3:.1f} ms/step '
          f'({args.batch_size / jax_median:.1f} images/s)')
    print(f'torch median {torch_median * 1e3:.1f} ms/step '
          f'({args.batch_size / torch_median:.1f} images/s)')
    print(f'jax_over_torch_time: {jax_median / torch_median:.3f}')


if __name__ == '__main__':
    main()
