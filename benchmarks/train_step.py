"""Train-step time of fcn-jax's FCN-8s against the same network in plain PyTorch.

Both sides train the same FCN-8s (VGG16 encoder at `--width`, fc6 7x7 and fc7 1x1 with
dropout 0.5, zero-initialised score layers, learned 2x bilinear upsamplings, fixed
bilinear x8 upsampling) on the same numpy batches, with pixel cross-entropy over 4
classes (every class labelled) and Adam at lr 3e-4.

- JAX: the project's own pmapped train step (`fcn_jax.train.pmapped_steps`) on a config
  derived from configs/default.py, batches fed through `flax.jax_utils.prefetch_to_device`
  as in `train_and_evaluate` (a host-to-device copy every step).
- PyTorch: `torch.from_numpy` on the same batch every step, forward, backward, step.

The torch model gets the JAX initial parameters, and the script checks that both give
the same logits and loss (dropout off) before timing. Compilation and warm-up steps are
excluded; then JAX and PyTorch alternate (`--steps` steps each) for `--repeats` rounds,
and the script prints the median time per step of each and `jax_over_torch_time`.

Threads: torch gets `--threads` intra-op threads (default: the CPU cores this process
may use); XLA's CPU client reads the same number from the NPROC environment variable,
set here before jax is imported.

  python benchmarks/train_step.py                         # CPU defaults, under 3 minutes
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
    parser.add_argument('--repeats', type=int, default=7, help='rounds of JAX then PyTorch')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps per side')
    parser.add_argument('--device', choices=('cpu', 'gpu'), default='cpu')
    parser.add_argument('--half_precision', action='store_true',
                        help='bfloat16 compute (config.half_precision, torch.autocast); GPU only')
    parser.add_argument('--threads', type=int, default=0,
                        help='CPU threads for torch and XLA (0: the cores this process may use)')
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


def configure_environment(args: argparse.Namespace) -> int:
    """Sets the thread count and platform for XLA; must run before jax is imported."""
    threads = args.threads or usable_cores()
    os.environ['NPROC'] = str(threads)  # XLA's CPU client sizes its thread pools from this
    os.environ['JAX_PLATFORMS'] = 'cuda' if args.device == 'gpu' else 'cpu'
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return threads


def make_batches(args: argparse.Namespace, num_devices: int, count: int = 4) -> list[dict]:
    """`count` host batches laid out as `input_pipeline.train_iterator` yields them."""
    import numpy as np

    rng = np.random.default_rng(0)
    d, b, s = num_devices, args.batch_size // num_devices, args.image_size
    return [{
        'image': rng.random((d, b, s, s, 1), dtype=np.float32),
        'mask': rng.integers(0, NUM_CLASSES, (d, b, s, s), dtype=np.int32),
        'labelled': np.ones((d, b, NUM_CLASSES), bool),
        'valid': np.ones((d, b), bool),
    } for _ in range(count)]


def benchmark_config(args: argparse.Namespace):
    """configs/default.py with the benchmark's sizes: Adam at a constant 3e-4, plain CE."""
    from configs import default

    config = default.get_config()
    config.update(dict(
        model='fcn8s', image_size=args.image_size, width_multiplier=args.width,
        batch_size=args.batch_size, input_channels=1, augment='none', batch_norm=False,
        dropout_rate=0.5, learn_final_upsample=False, half_precision=args.half_precision,
        optimizer='adam', learning_rate=3e-4, weight_decay=0.0, schedule='constant',
        warmup_fraction=0.0, loss='ce', class_weights=(1.0,) * NUM_CLASSES))
    return config


# ----------------------------------------------------------------------------------
# The PyTorch reference.

def torch_fcn8s(width: float, input_channels: int = 1):
    """FCN-8s in PyTorch (NCHW), layer for layer as fcn_jax.models.FCN(variant='fcn8s')."""
    import numpy as np
    import torch
    from torch import nn
    import torch.nn.functional as F

    from fcn_jax import models

    def up2() -> nn.ConvTranspose2d:
        # lax pads the dilated input by k - 1 - p with p = upsample_padding; torch by p_t,
        # with k - 1 - p_t equal to it: p_t = (k - f) // 2 = 1 for k = 4, f = 2.
        return nn.ConvTranspose2d(NUM_CLASSES, NUM_CLASSES, 4, stride=2, padding=1, bias=False)

    class FCN8s(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleDict()
            c_in = input_channels
            for names, channels in models.VGG16_BLOCKS:
                for name in names:
                    c_out = models.scaled_channels(channels, width)
                    self.convs[name] = nn.Conv2d(c_in, c_out, 3, padding=1)
                    c_in = c_out
            fc = models.scaled_channels(models.FC_CHANNELS, width)
            self.fc6 = nn.Conv2d(c_in, fc, 7, padding=3)
            self.fc7 = nn.Conv2d(fc, fc, 1)
            self.score_fr = nn.Conv2d(fc, NUM_CLASSES, 1)
            self.score_pool4 = nn.Conv2d(models.scaled_channels(512, width), NUM_CLASSES, 1)
            self.score_pool3 = nn.Conv2d(models.scaled_channels(256, width), NUM_CLASSES, 1)
            self.upscore2 = up2()
            self.upscore_pool4 = up2()
            self.interpolation: dict[int, torch.Tensor] = {}
            for layer in (self.score_fr, self.score_pool4, self.score_pool3):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
            for layer in (self.upscore2, self.upscore_pool4):
                kernel = models.bilinear_kernel(2, NUM_CLASSES)  # HWIO, symmetric
                layer.weight.data.copy_(torch.from_numpy(kernel.transpose(2, 3, 0, 1)))

        def upsample8(self, y: torch.Tensor) -> torch.Tensor:
            """Fixed bilinear x8, computed as fcn_jax.models.bilinear_upsample computes it."""
            return torch_bilinear_upsample(y, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pools = []
            for names, _ in models.VGG16_BLOCKS:
                for name in names:
                    x = F.relu(self.convs[name](x))
                x = F.max_pool2d(x, 2, 2)
                pools.append(x)
            x = F.dropout(F.relu(self.fc6(x)), 0.5, self.training)
            x = F.dropout(F.relu(self.fc7(x)), 0.5, self.training)
            y = self.upscore2(self.score_fr(x).float()) + self.score_pool4(pools[3]).float()
            y = self.upscore_pool4(y) + self.score_pool3(pools[2]).float()
            return self.upsample8(y)

    return FCN8s()


def torch_bilinear_upsample(y, factor: int):
    """NCHW twin of fcn_jax.models.bilinear_upsample: the same separable matmuls."""
    import torch

    from fcn_jax import models

    _, _, h, w = y.shape
    with torch.autocast(y.device.type, enabled=False):
        y = y.float()
        a_h = torch.from_numpy(models._interpolation_matrix(h, factor)).to(y.device)
        a_w = torch.from_numpy(models._interpolation_matrix(w, factor)).to(y.device)
        return torch.einsum('nchw,oh,pw->ncop', y, a_h, a_w)


def load_jax_params(module, params: dict) -> None:
    """Copies flax FCN params (HWIO kernels) into the torch model."""
    import numpy as np
    import torch

    def conv(layer, p: dict) -> None:
        layer.weight.data.copy_(torch.from_numpy(np.asarray(p['kernel']).transpose(3, 2, 0, 1)))
        layer.bias.data.copy_(torch.from_numpy(np.asarray(p['bias'])))

    for name, layer in module.convs.items():
        conv(layer, params[name])
    for name in ('fc6', 'fc7', 'score_fr', 'score_pool4', 'score_pool3'):
        conv(getattr(module, name), params[name])
    for name in ('upscore2', 'upscore_pool4'):
        # flax ConvTranspose (transpose_kernel=False) correlates the dilated input with the
        # kernel as stored; torch's ConvTranspose2d with the spatially flipped kernel.
        kernel = np.asarray(params[name]['kernel'])[::-1, ::-1].transpose(2, 3, 0, 1)
        getattr(module, name).weight.data.copy_(torch.from_numpy(kernel.copy()))


# ----------------------------------------------------------------------------------

def count_params(tree: Any) -> int:
    import jax
    return sum(int(x.size) for x in jax.tree.leaves(tree))


def jax_batches(host_batches: list[dict], prefetch: int) -> Iterator[dict]:
    """Host batches cycled forever, put on the devices as `train_and_evaluate` does."""
    import itertools

    import flax

    return flax.jax_utils.prefetch_to_device(itertools.cycle(host_batches), prefetch)


def torch_batch(batch: dict, device) -> tuple[Any, Any]:
    """(image NCHW float32, mask int64) from a host batch laid out [D, B, ...]."""
    import torch

    image = batch['image'].reshape((-1,) + batch['image'].shape[2:])
    mask = batch['mask'].reshape((-1,) + batch['mask'].shape[2:])
    image = torch.from_numpy(image).to(device, non_blocking=True).permute(0, 3, 1, 2)
    mask = torch.from_numpy(mask).to(device, non_blocking=True).long()
    return image, mask


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = configure_environment(args)

    import jax
    import numpy as np
    import torch
    import torch.nn.functional as F

    from fcn_jax import train

    torch.set_num_threads(threads)
    torch_device = torch.device('cuda' if args.device == 'gpu' else 'cpu')
    num_devices = jax.local_device_count()
    if args.batch_size % num_devices:
        raise SystemExit(f'--batch_size {args.batch_size} must divide over {num_devices} devices')

    print(f'machine: {cpu_model()}, {usable_cores()} cores usable ({os.cpu_count()} online), '
          f'{threads} threads for torch and XLA (NPROC)')
    print(f'jax {jax.__version__} ({jax.devices()[0].device_kind} x{num_devices}), '
          f'torch {torch.__version__} ({torch_device}), numpy {np.__version__}, '
          f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')
    if args.device == 'gpu':
        print(f'gpu: {torch.cuda.get_device_name(torch_device)}')
    print(f'FCN-8s, image {args.image_size}x{args.image_size}x1, width {args.width}, '
          f'batch {args.batch_size}, {"bfloat16" if args.half_precision else "float32"} compute, '
          f'{args.steps} steps x {args.repeats} repeats per side after {args.warmup} warm-up steps')

    # --- JAX: the project's train step.
    config = benchmark_config(args)
    model = train.create_model(config)
    state = train.create_train_state(jax.random.PRNGKey(0), config, model)
    p_train, _, _ = train.pmapped_steps(config)
    step_rng = jax.random.PRNGKey(1)
    host_batches = make_batches(args, num_devices)
    batches = jax_batches(host_batches, config.prefetch)

    # --- PyTorch: the same network, from the same initial parameters.
    net = torch_fcn8s(args.width, config.input_channels)
    jax_count, torch_count = count_params(state.params), sum(p.numel() for p in net.parameters())
    print(f'parameters: jax {jax_count:,}, torch {torch_count:,}')
    if jax_count != torch_count:
        raise SystemExit('parameter counts differ: the two models are not the same')
    load_jax_params(net, jax.device_get(state.params))
    net = net.to(torch_device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    autocast = torch.autocast(torch_device.type, dtype=torch.bfloat16,
                              enabled=args.half_precision)

    # Same function: perturb the zero-initialised score layers so the check sees the whole
    # network, then compare eval-mode logits and the loss.
    check_params = jax.tree.map(np.asarray, jax.device_get(state.params))
    perturb = np.random.default_rng(2)
    for name in ('score_fr', 'score_pool4', 'score_pool3'):
        kernel = check_params[name]['kernel']
        check_params[name] = dict(check_params[name], kernel=(
            perturb.standard_normal(kernel.shape).astype(np.float32) * 0.1))
    check_net = torch_fcn8s(args.width, config.input_channels)
    load_jax_params(check_net, check_params)
    check_net = check_net.to(torch_device).eval()
    image, mask = torch_batch(host_batches[0], torch_device)
    jax_image = host_batches[0]['image'].reshape(image.shape[0], *image.shape[2:], 1)
    with torch.no_grad(), autocast:
        torch_logits = check_net(image).float().permute(0, 2, 3, 1).cpu().numpy()
        torch_loss = float(F.cross_entropy(check_net(image).float(), mask))
    jax_logits = np.asarray(model.apply({'params': check_params}, jax_image, train=False))
    jax_loss = float(train._loss(config, jax_logits, {
        'mask': host_batches[0]['mask'].reshape(mask.shape),
        'labelled': np.ones((mask.shape[0], NUM_CLASSES), bool)}).mean())
    scale = float(np.abs(jax_logits).max())
    diff = float(np.abs(jax_logits - torch_logits).max())
    print(f'same function: logits {jax_logits.shape}, max |jax - torch| {diff:.2e} '
          f'(max |logit| {scale:.2e}), loss jax {jax_loss:.6f} torch {torch_loss:.6f}')
    tolerance = 5e-2 if args.half_precision else 1e-3
    if diff > tolerance * max(scale, 1.0):
        raise SystemExit('the JAX and PyTorch models compute different functions')
    del check_net

    net.train()
    step = 0

    def jax_steps(n: int) -> float:
        nonlocal state, step
        start = time.perf_counter()
        for _ in range(n):
            step += 1
            batch = next(batches)
            state, metrics = p_train(state, batch, jax.random.fold_in(step_rng, step))
        jax.block_until_ready((state, metrics))
        return (time.perf_counter() - start) / n

    def torch_sync() -> None:
        if torch_device.type == 'cuda':
            torch.cuda.synchronize(torch_device)

    torch_index = 0

    def torch_steps(n: int) -> float:
        nonlocal torch_index
        torch_sync()
        start = time.perf_counter()
        for _ in range(n):
            image, mask = torch_batch(host_batches[torch_index % len(host_batches)], torch_device)
            torch_index += 1
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
        print(f'repeat {r + 1}: jax {jax_times[-1] * 1e3:8.1f} ms/step   '
              f'torch {torch_times[-1] * 1e3:8.1f} ms/step')
    jax_median, torch_median = statistics.median(jax_times), statistics.median(torch_times)
    print(f'jax median   {jax_median * 1e3:.1f} ms/step '
          f'({args.batch_size / jax_median:.1f} images/s)')
    print(f'torch median {torch_median * 1e3:.1f} ms/step '
          f'({args.batch_size / torch_median:.1f} images/s)')
    print(f'jax_over_torch_time: {jax_median / torch_median:.3f}')


if __name__ == '__main__':
    main()
