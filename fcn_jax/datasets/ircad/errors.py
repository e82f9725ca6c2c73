"""The one error type raised for bad input data."""


class DataError(ValueError):
    """Input data that cannot be read: the message names the file and the problem."""
