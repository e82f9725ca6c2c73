"""`tfds build` of the `ircad` dataset: wall time and peak memory as the number of patients grows.

For each patient count (default 1, 2 and 4) the script writes that many phantom patients
of 512x512 slices as the IRCAD archive `3Dircadb1.zip` (`phantom.write_archive`, form
`zip`) into a fresh manual dir, then runs

  tfds build fcn_jax/datasets/ircad --config real --manual_dir ... --data_dir ...

as a subprocess, the `real` config reading the archive as it reads the real one. Peak
memory is the larger of the kernel's maximum resident set of the build process (its
`wait4` rusage, which also covers any children it waited for, as `/usr/bin/time -v`
reports it) and the summed RSS of the process and its children, sampled every 20 ms.
The builder holds at most one patient at a time, so the peak should stay flat: the
script prints peak(most patients) / peak(fewest), the growth per patient and the build
time per slice. It exits non-zero when a build fails or makes the wrong splits.

  python benchmarks/build_dataset.py
  python benchmarks/build_dataset.py --patients 1,4,8 --num_slices 100 --max_ratio 1.2

The defaults take about 3 minutes on 2 CPU cores.
"""

import argparse
import dataclasses
import glob
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import psutil

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fcn_jax.datasets.ircad import phantom  # noqa: E402

BUILDER_DIR = REPO / 'fcn_jax' / 'datasets' / 'ircad'
SAMPLE_SECONDS = 0.02
MB = 1024 * 1024


@dataclasses.dataclass
class Run:
    """One build: its size, timings (s) and memory (MB)."""

    patients: int
    slices: int
    size: int
    archive_mb: float
    write_seconds: float
    build_seconds: float
    maxrss_mb: float
    tree_mb: float

    @property
    def peak_mb(self) -> float:
        return max(self.maxrss_mb, self.tree_mb)

    @property
    def patient_mb(self) -> float:
        """Raw bytes of one patient: int16 CT plus uint8 mask."""
        return self.slices / self.patients * 3 * self.size ** 2 / MB


class BuildError(RuntimeError):
    """A build that failed or made the wrong dataset; the message says why."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--patients', default='1,2,4',
                        help='patient counts to build, comma separated (default: %(default)s)')
    parser.add_argument('--num_slices', type=int, default=60,
                        help='slices per phantom patient (default: %(default)s)')
    parser.add_argument('--size', type=int, default=512,
                        help='slice rows and columns; the real config needs 512 '
                        '(default: %(default)s)')
    parser.add_argument('--tfds', default=None,
                        help="the tfds command (default: the one beside this Python, else PATH's)")
    parser.add_argument('--workdir', default=None,
                        help='keep archives, data and logs here (default: a deleted temp dir)')
    parser.add_argument('--max_ratio', type=float, default=None,
                        help='exit 3 when peak(most)/peak(fewest) exceeds this (default: no check)')
    args = parser.parse_args(argv)
    try:
        counts = sorted({int(p) for p in args.patients.split(',') if p.strip()})
    except ValueError:
        parser.error(f'--patients: expected counts like 1,2,4, got {args.patients!r}')
    if not counts or counts[0] < 1:
        parser.error('--patients: counts must be >= 1')
    if args.num_slices < 1:
        parser.error('--num_slices must be >= 1')
    args.counts = counts
    args.tfds = args.tfds or _default_tfds()
    if not args.tfds:
        parser.error('no tfds command found; pass --tfds')
    return args


def _default_tfds() -> str | None:
    beside = pathlib.Path(sys.executable).with_name('tfds')
    return str(beside) if beside.is_file() else shutil.which('tfds')


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and its children until `stop` is set."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop.is_set():
            total = 0
            try:
                processes = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for process in processes:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)
            self.stop.wait(SAMPLE_SECONDS)


def build(args: argparse.Namespace, count: int, folder: pathlib.Path) -> Run:
    """Writes `count` phantom patients into `folder/manual` and builds them into `folder/data`."""
    manual, data, log_path = folder / 'manual', folder / 'data', folder / 'build.log'
    start = time.perf_counter()
    archive = phantom.write_archive(manual, range(1, count + 1), form='zip',
                                    num_slices=args.num_slices, size=args.size)
    write_seconds = time.perf_counter() - start
    command = [args.tfds, 'build', str(BUILDER_DIR), '--config', 'real',
               '--manual_dir', str(manual), '--data_dir', str(data)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    with open(log_path, 'wb') as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env)
        sampler = TreeSampler(process.pid)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        build_seconds = time.perf_counter() - start
        sampler.stop.set()
        sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise BuildError(f'{" ".join(command)} exited with {process.returncode}; last lines of '
                         f'its output:\n' + '\n'.join(_tail(log_path)))
    _check_splits(data, count, args.num_slices)
    return Run(patients=count, slices=count * args.num_slices, size=args.size,
               archive_mb=archive.stat().st_size / MB, write_seconds=write_seconds,
               build_seconds=build_seconds, maxrss_mb=usage.ru_maxrss * 1024 / MB,
               tree_mb=sampler.peak / MB)


def _tail(log_path: pathlib.Path, count: int = 8) -> list[str]:
    """The last `count` non-blank lines of a log, without progress-bar redraws."""
    lines = []
    for line in log_path.read_text(errors='replace').splitlines():
        line = line.split('\r')[-1].replace('\x1b[A', '').strip()
        if line:
            lines.append(line)
    return lines[-count:]


def _check_splits(data: pathlib.Path, count: int, num_slices: int) -> None:
    """BuildError unless the data dir holds splits patient_1..count of num_slices examples."""
    infos = glob.glob(str(data / 'ircad' / 'real' / '*' / 'dataset_info.json'))
    if len(infos) != 1:
        raise BuildError(f'expected one built version of ircad/real in {data}, found {len(infos)}')
    with open(infos[0]) as f:
        splits = {s['name']: sum(int(n) for n in s.get('shardLengths', []))
                  for s in json.load(f)['splits']}
    expected = {f'patient_{i}': num_slices for i in range(1, count + 1)}
    if splits != expected:
        raise BuildError(f'{infos[0]}: splits {splits}, expected {expected}')


def report(runs: list[Run]) -> None:
    header = ('patients', 'slices', 'archive MB', 'write s', 'build s', 'build s/slice',
              'maxrss MB', 'tree MB', 'peak MB', 'peak / first')
    first = runs[0]
    lines = [header] + [(
        str(r.patients), str(r.slices), f'{r.archive_mb:.1f}', f'{r.write_seconds:.1f}',
        f'{r.build_seconds:.1f}', f'{r.build_seconds / r.slices:.3f}', f'{r.maxrss_mb:.0f}',
        f'{r.tree_mb:.0f}', f'{r.peak_mb:.0f}', f'{r.peak_mb / first.peak_mb:.3f}')
        for r in runs]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print()
    for line in lines:
        print('  '.join(cell.rjust(w) for cell, w in zip(line, widths)))
    last = runs[-1]
    print(f'\npeak({last.patients}) / peak({first.patients}) = '
          f'{last.peak_mb / first.peak_mb:.3f}', end='')
    if last.patients > first.patients:
        growth = (last.peak_mb - first.peak_mb) / (last.patients - first.patients)
        slope = (last.build_seconds - first.build_seconds) / (last.slices - first.slices)
        print(f'; {growth:+.1f} MB per extra patient '
              f'(one patient is {last.patient_mb:.1f} MB of raw slices)')
        print(f'build time per slice: {last.build_seconds / last.slices:.3f} s overall at '
              f'{last.patients} patients, {slope:.3f} s per extra slice (start-up excluded)')
    else:
        print()
    print('maxrss: the kernel peak of the build process (wait4 rusage, children included); '
          f'tree: summed RSS of the process tree sampled every {SAMPLE_SECONDS * 1000:.0f} ms; '
          'peak: the larger.')


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f'tfds build of ircad/real from phantom archives: patients {args.counts}, '
          f'{args.num_slices} slices of {args.size}x{args.size} each; {args.tfds}', flush=True)
    with tempfile.TemporaryDirectory(prefix='fcn-jax-build-bench-') as tmp:
        root = pathlib.Path(args.workdir or tmp)
        runs = []
        for count in args.counts:
            folder = root / f'patients_{count}'
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            try:
                run = build(args, count, folder)
            except BuildError as err:
                print(f'error: {err}', file=sys.stderr)
                return 1
            runs.append(run)
            print(f'{count} patient(s): wrote {run.archive_mb:.1f} MB in '
                  f'{run.write_seconds:.1f} s, built in {run.build_seconds:.1f} s, '
                  f'peak {run.peak_mb:.0f} MB', flush=True)
            if not args.workdir:
                shutil.rmtree(folder)
    report(runs)
    ratio = runs[-1].peak_mb / runs[0].peak_mb
    if args.max_ratio is not None and ratio > args.max_ratio:
        print(f'error: peak memory grew {ratio:.3f}x, more than --max_ratio {args.max_ratio}',
              file=sys.stderr)
        return 3
    return 0


if __name__ == '__main__':
    sys.exit(main())
