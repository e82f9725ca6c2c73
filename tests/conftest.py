"""Test set-up: several host devices so the pmap path runs on a CPU, and the shared IRCAD sample."""

import os
import pathlib

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
IRCAD_SAMPLE = REPO.parent / 'shared' / 'ircad-sample'


@pytest.fixture
def ircad_sample() -> pathlib.Path:
    """The few real IRCAD slices beside the checkout; the test is skipped when they are absent."""
    if not (IRCAD_SAMPLE / '3Dircadb1').is_dir():
        pytest.skip(f'real IRCAD sample not found at {IRCAD_SAMPLE}')
    return IRCAD_SAMPLE
