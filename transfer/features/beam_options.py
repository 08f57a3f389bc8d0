"""Apache Beam's pipeline options as `--beam-option NAME=VALUE` gives them, checked against what
Beam knows before any slow work (and a Dask scheduler's address, that one answers there), and
Beam imported quietly or said missing in one line.

Neither TensorFlow nor Apache Beam is imported here at load time: the CLI checks options before
TensorFlow starts; `transfer.features.beam` (the pipeline) and `transfer.features.runners` use it.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import logging
import socket

from transfer.errors import TransferError

BEAM_EXTRA = "pip install 'transfer[beam]'"
DASK_EXTRA = "pip install 'transfer[dask]'"
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"  # Beam knows it by this path only
SCHEDULER_TIMEOUT = 10  # seconds to reach a Dask scheduler before saying nobody answers
DASK_PORT = 8786  # a Dask scheduler's port when the address names none


def check_beam_options(options: dict) -> dict:
    """Each option a name Beam's PipelineOptions know, with a value they accept: one line
    naming the bad one (and the closest names) otherwise; Beam missing: what to install."""
    import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    known = set(PipelineOptions([]).get_all_options(retain_unknown_options=False))
    if uses_dask(options):
        flags, names = dask_options()
        known = known - names | flags
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
    if options.get("dask_client_address"):
        check_scheduler(options["dask_client_address"])
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


def uses_dask(options: dict) -> bool:
    """Whether these options run on Beam's DaskRunner (or set its options)."""
    return (options.get("runner") in ("DaskRunner", DASK_RUNNER)
            or any(name.startswith("dask_") for name in options))


def dask_options() -> tuple[set, set]:
    """The DaskRunner's pipeline options: their flags, and the other names Beam files them under
    (`dask_client_address` is `address`), importing the runner and dask.distributed; missing:
    one line saying what to install."""
    try:
        from apache_beam.runners.dask.dask_runner import DaskOptions
        import dask.distributed  # noqa: F401  (the runner imports it quietly, or not at all)
    except ImportError:
        raise TransferError(f"--beam-option runner=DaskRunner needs dask.distributed: {DASK_EXTRA}") from None
    parser = argparse.ArgumentParser(add_help=False)
    DaskOptions._add_argparse_args(parser)  # how every PipelineOptions subclass declares its options
    actions = parser._actions
    return {flag[2:] for action in actions for flag in action.option_strings}, {action.dest for action in actions}


def resolved_runner(options: dict) -> dict:
    """The options as Beam takes them: `runner=DaskRunner` by the runner's module path."""
    return {**options, "runner": DASK_RUNNER} if options.get("runner") == "DaskRunner" else dict(options)


def check_scheduler(address: str) -> None:
    """Somebody listens at a Dask scheduler's TCP address (`tcp://HOST:PORT`, `HOST:PORT`, `HOST`):
    one line otherwise, within seconds (Dask's client would retry for its whole connect timeout).
    Other protocols (tls://, ucx://) are left to Dask."""
    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp"):
        return
    host, colon, port = rest.rpartition(":") if not rest.endswith("]") else (rest, "", "")
    host, port = (host, port) if colon else (rest, str(DASK_PORT))
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=SCHEDULER_TIMEOUT):
            pass
    except (OSError, ValueError) as error:
        reason = "nothing listens there" if isinstance(error, ConnectionRefusedError) else \
            (error.strerror or str(error) or type(error).__name__) if isinstance(error, OSError) else "bad port"
        raise TransferError(f"--beam-option dask_client_address={address}: no Dask scheduler answers ({reason}); "
                            "start one (`dask scheduler`, then `dask worker ADDRESS` on each machine) or give its "
                            "address") from None


def beam_value(value):
    """`true`/`false` as booleans (Beam's switches take no value), anything else as text."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def flag(name, value) -> str:
    """`name=value`, as the user typed the option."""
    return f"{name}={value}"
