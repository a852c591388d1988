"""The two error kinds the science package raises on bad input.

ConfigError: a configuration value is wrong; the message starts with the dotted key (``corpus.train_bytes: ...``).
DataError: the inputs a config points at are missing or unusable (a corpus package not installed, a text too
small for the requested vocabulary, a corrupt cache file).
"""


class ConfigError(ValueError):
    """A configuration key is unknown, missing or has a bad value; the message names the key."""


class DataError(RuntimeError):
    """Data the configuration needs is missing or unusable; the message says which and how to fix it."""
