"""FCN-8s training on an NVIDIA GPU: images per second and model-FLOPs utilisation (MFU).

For float32 and bfloat16 (`config.half_precision`: bfloat16 convs, float32 parameters)
the script times, at 512 x 512 pixels and width 1 by default:

- jax: the project's pmapped train step (`fcn_jax.train.pmapped_steps`, Adam, plain
  cross-entropy, augment 'none'), batches put on the device each step through
  `flax.jax_utils.prefetch_to_device` as in training;
- torch: the same FCN-8s in PyTorch (`benchmarks/torch_fcn.py`) on the same GPU, with
  `torch.autocast(bfloat16)` for the bfloat16 row, cuDNN autotuning, TF32 matmuls (XLA's
  default precision) and channels_last (`--torch_nchw` to keep NCHW);
- the input pipeline (`fcn_jax.input_pipeline.train_iterator` over the synthetic phantom
  'ircad/phantom', resized to the same size; built on first use into `--data_dir`).

Model FLOPs are counted from the layers: per image, 2 x (3 x the forward MACs of every
conv - conv1_1's), i.e. forward plus input and weight gradients, with fc6 counted as a
dense 7x7 conv over its padded window, and the transposed 2x convs as k x k x C_in x C_out
per input cell; max-pooling, the fixed x8 resize, the loss and Adam are not counted. The
script also prints XLA's own count (`compiled.cost_analysis()['flops']`). MFU is model
FLOPs per second over the card's dense peak: bfloat16 against the bf16 tensor-core peak,
float32 against TF32 (which XLA and cuDNN use for float32 by default) and FP32.

Both run on one card, the first (CUDA_VISIBLE_DEVICES=0 unless set), and share it in one
process: JAX does not preallocate its memory here.
The default batch of 16 at 512 px and width 1 takes roughly 10 to 20 GB of GPU memory
per framework; use `--batch_size` on smaller cards.

  python benchmarks/gpu.py                  # under 5 minutes on an H100/H200
  python benchmarks/gpu.py --device cpu --image_size 64 --width 0.0625 --batch_size 2 \\
      --steps 2 --warmup 1 --pipeline_batches 2    # smoke test on a CPU
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import train_step as common

# Dense tensor-core peaks in TFLOPS: (name substring, bf16, tf32, fp32). First match wins.
# T4 and V100 have no bf16 tensor cores: their fp16 peak is listed in the bf16 column.
PEAK_TFLOPS = (
    ('H200', 989.0, 494.0, 67.0),
    ('H100 PCIe', 756.0, 378.0, 51.0),
    ('H100', 989.0, 494.0, 67.0),  # SXM
    ('A100', 312.0, 156.0, 19.5),
    ('L40S', 362.0, 183.0, 91.6),
    ('L4', 121.0, 60.0, 30.3),
    ('A10', 125.0, 62.5, 31.2),
    ('T4', 65.0, 8.1, 8.1),
    ('V100', 125.0, 15.7, 15.7),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', choices=('gpu', 'cpu'), default='gpu',
                        help='cpu: a smoke test with tiny sizes')
    parser.add_argument('--image_size', type=int, default=512, help='multiple of 32')
    parser.add_argument('--width', type=float, default=1.0, help='VGG16 width multiplier')
    parser.add_argument('--batch_size', type=int, default=16)
    parser.add_argument('--steps', type=int, default=20, help='timed steps per measurement')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps after compiling')
    parser.add_argument('--precisions', default='float32,bfloat16')
    parser.add_argument('--peak_tflops', type=float, default=0.0,
                        help='bf16 dense peak of the card (default: from the table)')
    parser.add_argument('--peak_tflops_fp32', type=float, default=0.0,
                        help='float32 peak used for the float32 row (default: TF32 and FP32 '
                             'from the table)')
    parser.add_argument('--skip_torch', action='store_true')
    parser.add_argument('--torch_nchw', action='store_true',
                        help='keep the torch model in NCHW instead of channels_last')
    parser.add_argument('--pipeline_batches', type=int, default=20,
                        help='timed input-pipeline batches (0: skip)')
    parser.add_argument('--dataset', default='ircad/phantom')
    parser.add_argument('--data_dir', default=None, help='TFDS data dir (default: TFDS\'s)')
    parser.add_argument('--threads', type=int, default=0,
                        help='CPU threads for torch and XLA on CPU (0: all usable cores)')
    args = parser.parse_args(argv)
    if args.image_size % 32:
        parser.error('--image_size must be a multiple of 32')
    return args


def conv_layers(image_size: int, width: float, input_channels: int = 1,
                num_classes: int = 4) -> list[tuple[str, int, int, int, int]]:
    """(name, cells, kernel, C_in, C_out) of every FCN-8s conv, per image.

    `cells` is the number of output cells (input cells for the transposed 2x convs).
    Every conv is stride 1 'SAME', so a conv's output has its input's size.
    """
    from fcn_jax import models

    layers, size, c_in, pools = [], image_size, input_channels, []
    for names, channels in models.VGG16_BLOCKS:
        for name in names:
            c_out = models.scaled_channels(channels, width)
            layers.append((name, size * size, 3, c_in, c_out))
            c_in = c_out
        size //= 2
        pools.append((size, c_in))
    fc = models.scaled_channels(models.FC_CHANNELS, width)
    (s3, c3), (s4, c4), (s5, _) = pools[2], pools[3], pools[4]
    layers += [('fc6', s5 * s5, 7, c_in, fc), ('fc7', s5 * s5, 1, fc, fc),
               ('score_fr', s5 * s5, 1, fc, num_classes),
               ('upscore2', s5 * s5, 4, num_classes, num_classes),
               ('score_pool4', s4 * s4, 1, c4, num_classes),
               ('upscore_pool4', s4 * s4, 4, num_classes, num_classes),
               ('score_pool3', s3 * s3, 1, c3, num_classes)]
    return layers


def model_flops_per_image(image_size: int, width: float) -> tuple[float, float]:
    """(forward FLOPs, training FLOPs) per image, counted as described in the docstring."""
    layers = conv_layers(image_size, width)
    macs = {name: cells * k * k * c_in * c_out for name, cells, k, c_in, c_out in layers}
    forward = sum(macs.values())
    return 2.0 * forward, 2.0 * (3 * forward - macs['conv1_1'])


def peaks(device_name: str, args: argparse.Namespace) -> tuple[dict[str, float], str]:
    """({'bfloat16': ..., 'tf32': ..., 'fp32': ...} in TFLOPS, where they come from)."""
    row = next((r for r in PEAK_TFLOPS if r[0].lower() in device_name.lower()), None)
    found = dict(zip(('bfloat16', 'tf32', 'fp32'), row[1:])) if row else {}
    source = f'table row {row[0]!r}' if row else 'no table row for this device'
    if args.peak_tflops:
        found['bfloat16'], source = args.peak_tflops, source + ', bf16 from --peak_tflops'
    if args.peak_tflops_fp32:
        found['tf32'] = found['fp32'] = args.peak_tflops_fp32
        source += ', float32 from --peak_tflops_fp32'
    return found, source


def mfu_text(flops_per_s: float, precision: str, peak: dict[str, float]) -> str:
    keys = ('bfloat16',) if precision == 'bfloat16' else ('tf32', 'fp32')
    if precision == 'float32' and peak.get('tf32') == peak.get('fp32'):
        keys = ('fp32',)
    parts = [f'{100 * flops_per_s / (peak[k] * 1e12):5.1f}% of {k} peak {peak[k]:g}'
             for k in keys if peak.get(k)]
    return ', '.join(parts) if parts else 'MFU n/a (no peak: pass --peak_tflops)'


def xla_flops(compiled: Any) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend reports costs
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost['flops']) if cost and 'flops' in cost else None


def time_jax(args: argparse.Namespace, precision: str, num_devices: int,
             host_batches: list[dict]) -> tuple[float, float | None, Any]:
    """(seconds per step, XLA FLOPs per step or None, initial flax params) of the JAX step."""
    import jax

    from fcn_jax import train

    config = common.benchmark_config(args.image_size, args.width, args.batch_size,
                                     precision == 'bfloat16')
    model = train.create_model(config)
    state = train.create_train_state(jax.random.PRNGKey(0), config, model)
    initial = jax.device_get(state.params)
    p_train, _, _ = train.pmapped_steps(config)
    batches = common.prefetched(host_batches, config.prefetch)
    rng = jax.random.PRNGKey(1)
    start = time.perf_counter()
    compiled = p_train.lower(state, next(batches), rng).compile()
    print(f'  jax compile {time.perf_counter() - start:.1f} s')
    flops = xla_flops(compiled)
    if flops is not None:
        flops *= num_devices  # cost_analysis counts one device's program

    def run(n: int) -> float:
        nonlocal state
        begin = time.perf_counter()
        for i in range(n):
            state, metrics = compiled(state, next(batches), jax.random.fold_in(rng, i))
        jax.block_until_ready((state, metrics))
        return (time.perf_counter() - begin) / n

    run(args.warmup)
    return run(args.steps), flops, initial


def time_torch(args: argparse.Namespace, precision: str, params: Any,
               host_batches: list[dict]) -> float:
    """Seconds per step of the PyTorch FCN-8s on the same batches."""
    import torch
    import torch.nn.functional as F

    import torch_fcn

    device = torch.device('cuda' if args.device == 'gpu' else 'cpu')
    channels_last = args.device == 'gpu' and not args.torch_nchw
    net = torch_fcn.FCN8s(args.width)
    torch_fcn.load_flax_params(net, params)
    net = net.to(device).train()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=precision == 'bfloat16')

    def sync() -> None:
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    def run(n: int, offset: int) -> float:
        sync()
        begin = time.perf_counter()
        for i in range(n):
            image, mask = common.torch_batch(host_batches[(offset + i) % len(host_batches)],
                                             device, channels_last)
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                logits = net(image)
            F.cross_entropy(logits.float(), mask).backward()
            optimizer.step()
        sync()
        return (time.perf_counter() - begin) / n

    run(1 + args.warmup, 0)
    return run(args.steps, 1)


def time_pipeline(args: argparse.Namespace) -> tuple[float, float]:
    """(images per second of the host input pipeline, seconds to load or build the dataset)."""
    from configs import default
    from fcn_jax import input_pipeline

    config = default.get_config()
    config.update(dict(dataset=args.dataset, data_dir=args.data_dir,
                       train_split=default.patients(1, 6), eval_split=default.patients(7, 8),
                       image_size=args.image_size, batch_size=args.batch_size))
    start = time.perf_counter()
    input_pipeline.load_builder(config, splits=(config.train_split,))
    prepare = time.perf_counter() - start
    batches = input_pipeline.train_iterator(config)
    for _ in range(3):  # tf.data start-up and autotuning
        next(batches)
    start = time.perf_counter()
    images = 0
    for _ in range(args.pipeline_batches):
        image = next(batches)['image']
        images += image.shape[0] * image.shape[1]
    return images / (time.perf_counter() - start), prepare


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = common.configure_environment(args.device, args.threads)

    import jax
    import torch

    if args.device == 'gpu':
        common.check_gpu(need_torch=not args.skip_torch)
    torch.set_num_threads(threads)
    if args.device == 'gpu':
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision('high')  # TF32, as XLA's default precision
        device_name = jax.devices()[0].device_kind  # e.g. 'NVIDIA H200'
    else:
        device_name = f'{common.cpu_model()} ({threads} threads)'
    num_devices = jax.local_device_count()
    if args.batch_size % num_devices:
        raise SystemExit(f'--batch_size {args.batch_size} must divide over {num_devices} devices')
    peak, peak_source = peaks(device_name, args)
    forward, train_flops = model_flops_per_image(args.image_size, args.width)
    print(f'device: {device_name}; jax {jax.__version__} ({jax.devices()[0].device_kind} '
          f'x{num_devices}), torch {torch.__version__}')
    print(f'peak TFLOPS (dense): {peak or "unknown"} ({peak_source})')
    print(f'FCN-8s {args.image_size}x{args.image_size}, width {args.width}, batch '
          f'{args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up steps')
    print('model FLOPs per image = 2 x (3 x sum over convs of cells x k^2 x C_in x C_out '
          f'- conv1_1\'s) = {train_flops / 1e9:.4g} GFLOP (forward {forward / 1e9:.4g} GFLOP)')

    host_batches = common.make_batches(args.image_size, args.batch_size, num_devices)
    rows = []
    for precision in [p.strip() for p in args.precisions.split(',') if p.strip()]:
        if precision not in ('float32', 'bfloat16'):
            raise SystemExit(f'unknown precision {precision!r}: use float32 and/or bfloat16')
        print(f'{precision}:')
        step, xla, params = time_jax(args, precision, num_devices, host_batches)
        rate = args.batch_size / step
        line = (f'  jax   {step * 1e3:8.1f} ms/step {rate:8.1f} images/s  '
                f'{mfu_text(rate * train_flops, precision, peak)}')
        if xla:
            line += (f'; XLA counts {xla / args.batch_size / 1e9:.4g} GFLOP/image '
                     f'({mfu_text(xla / step, precision, peak).split(",")[0]})')
        print(line)
        rows.append((precision, 'jax', rate))
        if not args.skip_torch:
            torch_step = time_torch(args, precision, params, host_batches)
            if args.device == 'gpu':
                torch.cuda.empty_cache()  # the model is gone: give its memory to the next JAX run
            torch_rate = args.batch_size / torch_step
            print(f'  torch {torch_step * 1e3:8.1f} ms/step {torch_rate:8.1f} images/s  '
                  f'{mfu_text(torch_rate * train_flops, precision, peak)}')
            print(f'  jax_over_torch_time: {step / torch_step:.3f}')
            rows.append((precision, 'torch', torch_rate))

    if args.pipeline_batches:
        rate, prepare = time_pipeline(args)
        print(f'input pipeline ({args.dataset} at {args.image_size} px, dataset ready after '
              f'{prepare:.1f} s): {rate:.1f} images/s')
        for precision, side, step_rate in rows:
            if side == 'jax':
                print(f'  pipeline / jax {precision} step: {rate / step_rate:.2f} '
                      f'(> 1: the pipeline keeps up)')


if __name__ == '__main__':
    main()
