"""Layer 7: the `transfer` command (`transfer.cli.main:main`), one module per command and what
they share (`arguments`). It parses arguments and calls the Python API; `--help`, argument errors
and `cache ls` import no TensorFlow, so they answer at once."""
