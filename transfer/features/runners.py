"""Where feature extraction runs: in this process (`local`, the default) or as an Apache Beam
pipeline (`beam`; `dask` is short for `beam` on Beam's DaskRunner, a dask.distributed cluster).
One interface, `get_runner(name, options).extract(cache, extractor, dtype, progress)`, so that
the cache, fit and sweep never branch on it.

This module imports neither TensorFlow nor Apache Beam: the Beam pipeline itself is
`transfer.features.beam`, loaded when a Beam runner extracts.
"""
from __future__ import annotations

from transfer.errors import TransferError, check_choice
from transfer.choices import RUNNERS
from transfer.features.beam_options import check_beam_options, flag



class LocalRunner:
    """One pass in this process (`FeatureCache.extract`)."""

    name = "local"

    def extract(self, cache, extractor, dtype: str = "float32", progress: bool = True) -> dict:
        return cache.extract(extractor, dtype=dtype, progress=progress)


class BeamRunner:
    """Extraction as an Apache Beam pipeline, one work item per missing shard (see
    `transfer.features.beam`). `options`: Beam pipeline options as {name: value} or
    [(name, value), ...] (`--beam-option direct_num_workers=2`); default: Beam's FnApiRunner, in
    this process (what the DirectRunner runs, without its attempt to download Prism first)."""

    def __init__(self, options=(), name: str = "beam"):
        self.options = check_beam_options(dict(options))
        self.name = name

    def extract(self, cache, extractor, dtype: str = "float32", progress: bool = True) -> dict:
        from transfer.features.beam import extract

        return extract(cache, extractor, self.options, dtype=dtype, progress=progress)


def get_runner(runner=None, options=()) -> LocalRunner | BeamRunner:
    """A runner by name (`local`, `beam`, `dask`: `beam` with `runner=DaskRunner`), or `runner`
    itself when it is one already."""
    if isinstance(runner, (LocalRunner, BeamRunner)):
        return runner
    name = check_choice("runner", runner or "local", RUNNERS, flag="--runner")
    if name == "local":
        if options:
            raise TransferError(f"--beam-option {flag(*next(iter(dict(options).items())))} sets a Beam pipeline "
                                "option: add --runner beam")
        return LocalRunner()
    if name == "dask":
        options = dict(options)
        if options.setdefault("runner", "DaskRunner") != "DaskRunner":
            raise TransferError(f"--runner dask runs on Beam's DaskRunner, not --beam-option "
                                f"runner={options['runner']}: use --runner beam for other Beam runners")
    return BeamRunner(options, name)
