"""`python -m transfer ARGS`: the `transfer` command, as `python -m transfer.cli`."""
import sys

from transfer.cli.main import main

sys.exit(main())
