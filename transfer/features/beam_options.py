"""Apache Beam's pipeline options as `--beam-option NAME=VALUE` gives them, checked against what
Beam knows before any slow work, and Beam imported quietly or said missing in one line.

Neither TensorFlow nor Apache Beam is imported here at load time: the CLI checks options before
TensorFlow starts; `transfer.features.beam` (the pipeline) and `transfer.features.runners` use it.
"""
from __future__ import annotations

import contextlib
import difflib
import io
import logging

from transfer.errors import TransferError

BEAM_EXTRA = "pip install 'transfer[beam]'"


def check_beam_options(options: dict) -> dict:
    """Each option a name Beam's PipelineOptions know, with a value they accept: one line
    naming the bad one (and the closest names) otherwise; Beam missing: what to install."""
    import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    known = PipelineOptions([]).get_all_options(retain_unknown_options=False)
    for name, value in options.items():
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            raise TransferError(f"--beam-option {flag(name, value)}: Beam has no pipeline option {name!r}"
                                + (f"; did you mean {', '.join(close)}?" if close else
                                   " (e.g. runner, direct_num_workers, direct_running_mode)"))
        messages = io.StringIO()
        try:
            with contextlib.redirect_stderr(messages):  # Beam's argparse says what is wrong, then exits
                PipelineOptions.from_dictionary({name: beam_value(value)}).get_all_options()
        except SystemExit:
            problem = messages.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1]
            raise TransferError(f"--beam-option {flag(name, value)}: {problem}") from None
    return options


def import_beam() -> None:
    """Apache Beam, without its import-time notices (a missing BigQuery client) on the root
    logger; missing: one line saying what to install."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        import apache_beam  # noqa: F401
    except ImportError:
        raise TransferError(f"--runner beam needs Apache Beam: {BEAM_EXTRA}") from None
    finally:
        logging.disable(previous)


def beam_value(value):
    """`true`/`false` as booleans (Beam's switches take no value), anything else as text."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def flag(name, value) -> str:
    """`name=value`, as the user typed the option."""
    return f"{name}={value}"
