"""The `transfer` command (`main`): it parses arguments and calls the Python API. No TensorFlow is
imported here: `--help`, argument errors and `cache ls` answer at once."""
from transfer.cli.main import main

__all__ = ["main"]
