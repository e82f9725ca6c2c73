"""Test set-up: several host devices so the pmap path runs on a CPU, and the shared IRCAD sample."""

import os
import pathlib
import tempfile

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Tests compile the same small programs many times, in-process and in subprocesses: share them.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), f'fcn-jax-test-cache-{os.getuid()}'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
IRCAD_SAMPLE = REPO.parent / 'shared' / 'ircad-sample'


@pytest.fixture
def ircad_sample() -> pathlib.Path:
    """The few real IRCAD slices beside the checkout; the test is skipped when they are absent."""
    if not (IRCAD_SAMPLE / '3Dircadb1').is_dir():
        pytest.skip(f'real IRCAD sample not found at {IRCAD_SAMPLE}')
    return IRCAD_SAMPLE


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory) -> str:
    """TFDS data dir holding `ircad/phantom_tiny`: 3 phantom patients of 6 slices of 64x64,
    kidneys annotated for patients 1 and 3."""
    import tensorflow_datasets as tfds
    from fcn_jax.datasets.ircad import IrcadConfig

    path = str(tmp_path_factory.mktemp('tfds'))
    config = IrcadConfig(name='phantom_tiny', source='phantom', image_size=64, num_patients=3,
                         num_slices=6, kidney_patients=(1, 3))
    tfds.builder('ircad', config=config, data_dir=path).download_and_prepare()
    return path


def tiny_config(data_dir, **overrides):
    """The quickstart config shrunk to the tiny phantom: 4 steps of a 1/16-width FCN-8s at 64 px."""
    from configs import quickstart

    config = quickstart.get_config()
    config.update(dict(
        dataset='ircad/phantom_tiny', data_dir=data_dir, train_split='patient_1+patient_2',
        eval_split='patient_3', image_size=64, width_multiplier=0.0625, batch_size=4,
        num_train_steps=4, log_every_steps=2, eval_every_steps=4, checkpoint_every_steps=2,
        warmup_fraction=0.0, shuffle_buffer=16, num_image_summaries=2, schedule='constant'))
    config.update(overrides)
    return config


@pytest.fixture(scope='session')
def trained(tiny_data_dir, tmp_path_factory):
    """A finished 4-step run on the tiny phantom: (final state, workdir)."""
    from fcn_jax import train

    workdir = tmp_path_factory.mktemp('trained')
    return train.train_and_evaluate(tiny_config(tiny_data_dir), str(workdir)), workdir
