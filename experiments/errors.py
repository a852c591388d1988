"""The error kinds the science package raises on bad input or bad data.

ConfigError: a configuration value is wrong; the message starts with the dotted key (``corpus.train_bytes: ...``).
DataError: the inputs a config points at are missing or unusable (a corpus package not installed, a text too
small for the requested vocabulary, a corrupt cache file, a full disk).
ResumeError: an interrupted run's checkpoint or partial recording cannot be continued (torn, foreign, gone):
the run store trains that run from step 0 instead.
DamagedRunError: a stored run file is not what was written (a chunk fails its checksum, the content digest
differs, the file is truncated): corruption of the store, never a result.
"""


class ConfigError(ValueError):
    """A configuration key is unknown, missing or has a bad value; the message names the key."""


class DataError(RuntimeError):
    """Data the configuration needs is missing or unusable; the message says which and how to fix it."""


class DamagedRunError(DataError):
    """A run file fails its checksums or cannot be read; the message names the file, dataset and steps."""


class ResumeError(DataError):
    """An interrupted run cannot be continued from its checkpoint; the message names the checkpoint or file."""
