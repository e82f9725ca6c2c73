"""Bad input on the command line: one clear error line and exit code 2, never a traceback."""

import contextlib
import sys

from fcn_jax import config_checks, input_pipeline, predict
from fcn_jax.datasets.ircad import DataError

USER_ERRORS = (config_checks.ConfigError, DataError, input_pipeline.DatasetError,
               predict.OutputError, FileNotFoundError)


@contextlib.contextmanager
def one_line_errors():
    """Turns the errors a user can fix (bad config, data, paths) into `ERROR: ...` and exit 2."""
    try:
        yield
    except USER_ERRORS as e:
        message = str(e).strip() or type(e).__name__
        print(f'ERROR: {message}', file=sys.stderr)
        sys.exit(2)
