"""The one error type of the data layer, in a module of its own so every reader can raise it."""


class DataError(ValueError):
    """A data file or its contents cannot be used; the message names the file and the problem
    (and, where there is one, the series, data row, timestamp and column)."""
