"""The exceptions srnas raises for bad input. The CLI turns them into one clear line and exit code 2."""


class SrnasError(Exception):
    """Base class: a problem the user can fix (bad file, bad key, bad value)."""


class ConfigError(SrnasError):
    """A configuration key is missing, unknown or has a bad value. The message names the key."""


class ImageError(SrnasError):
    """An image file cannot be used. The message names the file and what is wrong."""


class DataError(SrnasError):
    """A dataset (folder, archive, download) cannot be used. The message names it."""


class OutputError(SrnasError):
    """An output cannot be written (disk full, read-only folder) or would replace a file it must not (an input, a
    file the run did not create). The message names the path."""
