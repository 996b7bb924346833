"""srnas: real-time super-resolution by neural architecture and pruning search."""

__version__ = "0.1.0"
