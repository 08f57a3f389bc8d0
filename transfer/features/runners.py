"""Where feature extraction runs: in this process (`local`, the default) or as an Apache Beam
pipeline (`beam`). One interface, `get_runner(name, options).extract(cache, extractor, dtype,
progress)`, so that the cache, fit and sweep never branch on it.

This module imports neither TensorFlow nor Apache Beam: the Beam pipeline itself is
`transfer.features.beam`, loaded when a Beam runner extracts.
"""
from __future__ import annotations

import contextlib
import difflib
import io
import logging

from transfer.errors import TransferError, check_choice

RUNNERS = ("local", "beam")
BEAM_EXTRA = "pip install 'transfer[beam]'"


class LocalRunner:
    """One pass in this process (`FeatureCache.extract`)."""

    name = "local"

    def extract(self, cache, extractor, dtype: str = "float32", progress: bool = True) -> dict:
        return cache.extract(extractor, dtype=dtype, progress=progress)


class BeamRunner:
    """Extraction as an Apache Beam pipeline, one work item per missing shard (see
    `transfer.features.beam`). `options`: Beam pipeline options as {name: value} or
    [(name, value), ...] (`--beam-option direct_num_workers=2`); default: the DirectRunner."""

    name = "beam"

    def __init__(self, options=()):
        self.options = check_beam_options(dict(options))

    def extract(self, cache, extractor, dtype: str = "float32", progress: bool = True) -> dict:
        from transfer.features.beam import extract

        return extract(cache, extractor, self.options, dtype=dtype, progress=progress)


def get_runner(runner=None, options=()) -> LocalRunner | BeamRunner:
    """A runner by name (`local`, `beam`), or `runner` itself when it is one already."""
    if isinstance(runner, (LocalRunner, BeamRunner)):
        return runner
    name = check_choice("runner", runner or "local", RUNNERS, flag="--runner")
    if name == "local":
        if options:
            raise TransferError(f"--beam-option {_flag(*next(iter(dict(options).items())))} sets a Beam pipeline "
                                "option: add --runner beam")
        return LocalRunner()
    return BeamRunner(options)


def check_beam_options(options: dict) -> dict:
    """Each option a name Beam's PipelineOptions know, with a value they accept: one line
    naming the bad one (and the closest names) otherwise; Beam missing: what to install."""
    import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    known = PipelineOptions([]).get_all_options(retain_unknown_options=False)
    for name, value in options.items():
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            raise TransferError(f"--beam-option {_flag(name, value)}: Beam has no pipeline option {name!r}"
                                + (f"; did you mean {', '.join(close)}?" if close else
                                   " (e.g. runner, direct_num_workers, direct_running_mode)"))
        messages = io.StringIO()
        try:
            with contextlib.redirect_stderr(messages):  # Beam's argparse says what is wrong, then exits
                PipelineOptions.from_dictionary({name: beam_value(value)}).get_all_options()
        except SystemExit:
            problem = messages.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1]
            raise TransferError(f"--beam-option {_flag(name, value)}: {problem}") from None
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


def _flag(name, value) -> str:
    return f"{name}={value}"
