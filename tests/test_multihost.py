"""Two JAX processes on localhost train together: one device each, gradients averaged across them."""

import os
import pathlib
import re
import socket
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def test_two_processes_train_and_checkpoint(tiny_data_dir, tmp_path):
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS='')  # one CPU device per process
    logs = [tmp_path / f'process{i}.log' for i in range(2)]
    runs = []
    for i, log in enumerate(logs):
        with open(log, 'w') as out:
            runs.append(subprocess.Popen(
                [sys.executable, str(REPO / 'main.py'), '--config', str(REPO / 'configs/quickstart.py'),
                 '--workdir', str(tmp_path / 'w'), f'--config.data_dir={tiny_data_dir}',
                 '--config.dataset=ircad/phantom_tiny', '--config.train_split=patient_1+patient_2',
                 '--config.eval_split=patient_3', '--config.image_size=64',
                 '--config.batch_size=4', '--config.num_train_steps=4',
                 '--config.eval_every_steps=4', '--config.checkpoint_every_steps=2',
                 '--config.log_every_steps=2', f'--coordinator_address=localhost:{port}',
                 '--num_processes=2', f'--process_id={i}'],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO))
    try:
        codes = [run.wait(timeout=400) for run in runs]
    finally:
        for run in runs:
            run.kill()
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], texts[0][-3000:] + texts[1][-3000:]
    assert 'JAX process 1 of 2' in texts[1]
    losses = [re.findall(r'\[4\] .*train/loss=([0-9.]+)', text) for text in texts]
    assert losses[0] and losses[0] == losses[1]  # one model: the same loss on both processes
    workdir = tmp_path / 'w'
    assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['2', '4']
    assert len(list(workdir.glob('events.out.tfevents*'))) == 1  # only process 0 writes
