"""The console filter for library chatter (fcn_jax/log_filters.py)."""

import logging as std_logging

from absl import logging
import pytest

from fcn_jax import log_filters

ORBAX = '/venv/lib/python3.11/site-packages/orbax/checkpoint/checkpoint_manager.py'
FEATURE = '/venv/lib/python3.11/site-packages/tensorflow_datasets/core/features/feature.py'
OURS = '/repo/fcn_jax/train.py'


def _record(path: str, level: int, message: str) -> std_logging.LogRecord:
    return std_logging.LogRecord('absl', level, path, 1, message, None, None)


@pytest.mark.parametrize('path,level,message,kept', [
    (ORBAX, std_logging.INFO, 'Saving checkpoint at step 300', False),
    (ORBAX, std_logging.DEBUG, 'details', False),
    (ORBAX, std_logging.WARNING, 'Checkpoint step 300 is incomplete', True),
    (ORBAX, std_logging.ERROR, 'save failed', True),
    (FEATURE, std_logging.WARNING, '`FeatureConnector.dtype` is deprecated. Please change', False),
    (FEATURE, std_logging.WARNING, 'some other problem', True),
    (OURS, std_logging.INFO, 'Starting from step 0 of 900', True),
    (OURS, std_logging.WARNING, 'anything', True),
])
def test_routine_library_lines(path, level, message, kept):
    assert log_filters.RoutineLibraryLines().filter(_record(path, level, message)) is kept


def test_installed_once_and_not_when_verbose():
    handler = logging.get_absl_handler()
    old_filters, old_verbosity = list(handler.filters), logging.get_verbosity()
    try:
        for f in list(handler.filters):
            handler.removeFilter(f)
        logging.set_verbosity(logging.DEBUG)
        log_filters.quiet_library_logs()
        assert not handler.filters
        logging.set_verbosity(logging.INFO)
        log_filters.quiet_library_logs()
        log_filters.quiet_library_logs()
        assert [type(f) for f in handler.filters] == [log_filters.RoutineLibraryLines]
    finally:
        for f in list(handler.filters):
            handler.removeFilter(f)
        for f in old_filters:
            handler.addFilter(f)
        logging.set_verbosity(old_verbosity)
