"""The console log of main.py: the run's own lines, not its libraries' routine chatter.

Orbax logs a dozen INFO lines for every checkpoint it writes (threads, metadata stores,
handler registries), and TensorFlow Datasets warns about a deprecated field its own
readers use. At absl's default verbosity these are dropped; orbax's warnings and errors,
and everything from fcn-jax, stay. `--verbosity=1` (or more) shows them all again.
"""

from __future__ import annotations

import logging as std_logging

from absl import logging

# (part of the logging file's path, message start) of records to drop; '' matches any message.
ROUTINE = (
    ('/orbax/', ''),
    ('/tensorflow_datasets/core/features/feature.py', '`FeatureConnector.dtype` is deprecated'),
)


class RoutineLibraryLines(std_logging.Filter):
    """Drops INFO (and lower) lines from orbax and TFDS's own deprecation warning."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        path = record.pathname.replace('\\', '/')
        for part, start in ROUTINE:
            if part in path:
                if start:
                    return not record.getMessage().startswith(start)
                return record.levelno > std_logging.INFO
        return True


def quiet_library_logs() -> None:
    """Installs `RoutineLibraryLines` on absl's handler unless verbosity was raised."""
    if logging.get_verbosity() > logging.INFO:
        return
    handler = logging.get_absl_handler()
    if not any(isinstance(f, RoutineLibraryLines) for f in handler.filters):
        handler.addFilter(RoutineLibraryLines())
