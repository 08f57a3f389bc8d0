"""`python -m transfer.cli ARGS`: the `transfer` command."""
import sys

from transfer.cli.main import main

sys.exit(main())
