"""The `ircad` dataset. Importing this package registers the TFDS builder `ircad`."""

from .errors import DataError
from .ircad_dataset_builder import Builder, IrcadConfig
from .labels import CLASS_NAMES, NUM_CLASSES
