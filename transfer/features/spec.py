"""`CacheSpec`: where features are cached, how they are stored, and what extracts them.

The feature cache's settings as one small frozen value (as `TrainingSettings` is for training):
its directory (None: no cache), the dtype it stores, the engine that runs the frozen backbone,
its precision (and how many training examples an INT8 model is calibrated on), the runner the
extraction runs on, and what extraction does to spatial features (`pool`). Made
once, checked when made (cheap checks only, no TensorFlow), passed down.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from transfer.features.calibration import CALIBRATION, check_size
from transfer.choices import CACHE_DTYPES, ENGINES, INT8_ENGINES, POOLS, PRECISIONS, RUNNERS
from transfer.errors import TransferError, check_choice, check_keywords


@dataclasses.dataclass(frozen=True)
class CacheSpec:
    dir: str | None = None  # the cache's directory (or a remote URL); None: no cache
    dtype: str = "float32"  # how features are stored
    engine: str = "tf"  # what runs the frozen backbone when features are extracted
    runner: object = None  # where extraction runs: "local", "beam", or a runner (`transfer.features.runners`)
    pool: str | None = None  # none, avg, max: what extraction does to spatial features (None: the caller's default)
    precision: str = "fp32"  # int8: the engine runs a quantized model (OpenVINO; `transfer.features.engines`)
    calibration_size: int = CALIBRATION  # int8: how many training examples it is calibrated on

    def __post_init__(self):
        if isinstance(self.dir, Path):
            object.__setattr__(self, "dir", str(self.dir))
        if self.dir is not None and (not isinstance(self.dir, str) or not self.dir):
            raise TransferError(f"cache_dir={self.dir!r} (--cache-dir) must be a directory")
        check_choice("cache dtype", self.dtype, CACHE_DTYPES, flag="--cache-dtype")
        check_choice("engine", self.engine, ENGINES, flag="--engine")
        check_choice("precision", self.precision, PRECISIONS, flag="--precision")
        if self.precision == "int8" and self.engine not in INT8_ENGINES:
            raise TransferError(f"--precision int8 runs on --engine {' or '.join(INT8_ENGINES)} (OpenVINO, quantized "
                                f"by NNCF), not on --engine {self.engine}")
        check_size(self.calibration_size)
        if self.runner is None or isinstance(self.runner, str):
            check_choice("runner", self.runner or "local", RUNNERS, flag="--runner")
        elif not callable(getattr(self.runner, "extract", None)):
            raise TransferError(f"runner {self.runner!r}: give a runner made by transfer.features.runners.get_runner, "
                                "e.g. get_runner('beam')")
        if self.pool is not None:
            check_choice("pool", self.pool, POOLS, flag="--pool")

    @classmethod
    def of(cls, spec: CacheSpec | str | Path | None = None, **changes) -> CacheSpec:
        """`spec` (a CacheSpec, or a cache directory; default: no cache) with `changes`, checked;
        an unknown name is a one-line TransferError."""
        check_keywords("cache spec", changes, FIELDS)
        if not isinstance(spec, CacheSpec):
            spec = cls(dir=spec) if "dir" not in changes else cls()
        return dataclasses.replace(spec, **changes)

    @property
    def precision_config(self) -> dict:
        """The precision as a run's config records it: nothing for fp32 (older configs and sweep
        journals still match), else the precision and the calibration sample's size."""
        return {"precision": self.precision, "calibration_size": self.calibration_size} if self.precision != "fp32" \
            else {}

    @property
    def runner_name(self) -> str:
        return getattr(self.runner, "name", None) or self.runner or "local"

    def check_uncached(self) -> None:
        """Without a cache directory, the engine and runner have nothing to run: say so."""
        if self.dir is not None:
            return
        if self.precision != "fp32":
            raise TransferError(f"--precision {self.precision} runs the backbone when features are extracted into the "
                                "cache; without --cache-dir it runs inside the Keras model, in TensorFlow: add "
                                "--cache-dir")
        if self.engine != "tf":
            raise TransferError(f"--engine {self.engine} runs the backbone when features are extracted into the cache; "
                                "without --cache-dir it runs inside the Keras model, in TensorFlow: add --cache-dir")
        if self.runner_name != "local":
            raise TransferError(f"--runner {self.runner_name} runs the extraction into the feature cache; without "
                                "--cache-dir nothing is extracted: add --cache-dir")


FIELDS = tuple(field.name for field in dataclasses.fields(CacheSpec))
