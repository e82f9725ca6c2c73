"""Training end to end on the tiny phantom with 2 host devices: summaries, checkpoints, resume."""

import json
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from fcn_jax import config_checks, input_pipeline, modes, train

from conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
ALL = 'patient_1+patient_2+patient_3'


def scalars(workdir) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(workdir), size_guidance={'tensors': 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()['tensors']:
        values = [(e.step, tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
        out[tag] = values
    return out


def test_two_devices():
    assert jax.local_device_count() == 2


def test_train_and_evaluate(trained):
    state, workdir = trained
    assert int(state.step) == 4
    assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['2', '4']
    assert [p.name for p in (workdir / 'best').iterdir()] == ['4']
    saved = json.loads((workdir / 'config.json').read_text())
    assert saved['model'] == 'fcn8s' and saved['image_size'] == 64
    tags = scalars(workdir)
    expected = {'train/loss', 'train/learning_rate', 'train/steps_per_sec', 'eval/loss',
                'eval/pixel_accuracy', 'eval/mean_iou', 'eval/overlays'}
    expected |= {f'eval/{m}_{c}' for m in ('iou', 'dice') for c in ('liver', 'bone', 'kidney')}
    assert expected <= set(tags)
    assert [step for step, _ in tags['train/loss']] == [2, 4]
    assert [step for step, _ in tags['eval/mean_iou']] == [4]
    assert all(np.isfinite(float(v)) for _, v in tags['train/loss'])
    assert 0 <= float(tags['eval/pixel_accuracy'][0][1]) <= 1
    assert len(tags['eval/overlays'][0][1]) == 2 + 2  # width, height, then the 2 PNGs


def _params(state):
    return jax.tree_util.tree_leaves(jax.device_get(state.params))


def test_resume_continues_at_the_saved_step_with_equal_params(trained, tiny_data_dir, tmp_path):
    straight, _ = trained
    first = train.train_and_evaluate(tiny_config(tiny_data_dir, num_train_steps=2), str(tmp_path))
    assert int(first.step) == 2
    resumed = train.train_and_evaluate(tiny_config(tiny_data_dir), str(tmp_path))
    assert int(resumed.step) == 4
    for a, b in zip(_params(straight), _params(resumed)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    losses = scalars(tmp_path)['train/loss']
    assert [step for step, _ in losses] == [2, 4]


def test_batch_norm_and_half_precision_train(tiny_data_dir, tmp_path):
    config = tiny_config(tiny_data_dir, batch_norm=True, half_precision=True, num_train_steps=2,
                         eval_every_steps=2, augment='strong', loss='ce_dice')
    state = train.train_and_evaluate(config, str(tmp_path))
    assert state.batch_stats is not None
    leaves = jax.tree_util.tree_leaves(state.params)
    assert all(leaf.dtype == np.float32 for leaf in leaves)


@pytest.mark.parametrize('overrides, message', [
    (dict(model='fcn7s'), "config.model='fcn7s': choose one of fcn32s, fcn16s, fcn8s"),
    (dict(image_size=100), 'config.image_size=100: must be a multiple of 32'),
    (dict(batch_size=3), 'config.batch_size=3 is not divisible by the 2 devices'),
    (dict(init_from='/nonexistent/vgg16.safetensors', width_multiplier=1.0),
     'config.init_from: '),
    (dict(optimizer='rmsprop'), "config.optimizer='rmsprop': choose one of adam, sgd"),
])
def test_bad_config(tiny_data_dir, tmp_path, overrides, message):
    with pytest.raises(config_checks.ConfigError, match='^' + message.replace('(', r'\(')):
        train.train_and_evaluate(tiny_config(tiny_data_dir, **overrides), str(tmp_path))
    assert not any(tmp_path.iterdir())  # nothing written before the check


def test_bad_split(tiny_data_dir, tmp_path):
    with pytest.raises(input_pipeline.DatasetError, match="split 'patient_99'"):
        train.train_and_evaluate(tiny_config(tiny_data_dir, eval_split='patient_99'),
                                 str(tmp_path))


def _main(*args):
    return subprocess.run([sys.executable, str(REPO / 'main.py'), *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def test_main_reports_bad_input_in_one_line(tiny_data_dir, tmp_path):
    result = _main('--config', str(REPO / 'configs/quickstart.py'), '--workdir', str(tmp_path),
                   f'--config.data_dir={tiny_data_dir}', '--config.dataset=ircad/phantom_tiny',
                   '--config.train_split=patient_1', '--config.eval_split=patient_1',
                   '--config.image_size=96', '--config.model=fcn99s')
    assert result.returncode == 2
    assert 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "ERROR: config.model='fcn99s': choose one of fcn32s, fcn16s, fcn8s")


def test_main_iter_prints_a_batch(tiny_data_dir, tmp_path):
    result = _main('--config', str(REPO / 'configs/quickstart.py'), '--workdir', str(tmp_path),
                   '--mode', 'iter', f'--config.data_dir={tiny_data_dir}',
                   '--config.dataset=ircad/phantom_tiny', f'--config.train_split={ALL}',
                   f'--config.eval_split={ALL}', '--config.image_size=64')
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'image' in result.stdout and 'float32' in result.stdout
    assert 'liver' in result.stdout and 'kidney' in result.stdout


def test_evaluate_mode_without_checkpoint(tiny_data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match='no trained model'):
        modes.run_evaluate(tiny_config(tiny_data_dir), str(tmp_path / 'empty'))


def test_killed_run_resumes_from_its_last_complete_checkpoint(tiny_data_dir, tmp_path):
    common = ['--config', str(REPO / 'configs/quickstart.py'), '--workdir', str(tmp_path),
              f'--config.data_dir={tiny_data_dir}', '--config.dataset=ircad/phantom_tiny',
              '--config.train_split=patient_1+patient_2', '--config.eval_split=patient_3',
              '--config.image_size=64', '--config.width_multiplier=0.0625',
              '--config.batch_size=4', '--config.checkpoint_every_steps=2',
              '--config.log_every_steps=2']
    runner = subprocess.Popen([sys.executable, str(REPO / 'main.py'), *common,
                               '--config.num_train_steps=100000',
                               '--config.eval_every_steps=100000'],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    checkpoints = tmp_path / 'checkpoints'
    try:
        for _ in range(1200):  # wait until two complete checkpoints exist, then kill -9
            done = [p for p in checkpoints.iterdir() if p.name.isdigit()] if checkpoints.exists() else []
            if len(done) >= 2 or runner.poll() is not None:
                break
            time.sleep(0.25)
    finally:
        runner.kill()
        runner.wait()
    last = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    result = _main(*common, f'--config.num_train_steps={last + 2}',
                   f'--config.eval_every_steps={last + 2}')
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'Resuming from step {last} of {last + 2}' in result.stderr
    # Orbax's routine INFO lines about the checkpoint it just wrote are kept off the console.
    assert '/orbax/' not in result.stderr and 'checkpoint_manager.py' not in result.stderr
    assert str(last + 2) in [p.name for p in checkpoints.iterdir()]


def test_loss_falls_on_a_fixed_batch(tiny_data_dir):
    config = tiny_config(tiny_data_dir, learning_rate=3e-3, dropout_rate=0.0)
    state = train.create_train_state(jax.random.PRNGKey(0), config, train.create_model(config))
    p_train, _, _ = train.pmapped_steps(config)
    batch = next(input_pipeline.train_iterator(config))
    losses = []
    for step in range(30):
        state, step_metrics = p_train(state, batch, jax.random.PRNGKey(step))
        losses.append(float(step_metrics.compute()['loss']))
    assert losses[-1] < 0.5 * losses[0], losses
