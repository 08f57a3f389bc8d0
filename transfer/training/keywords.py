"""The keyword arguments users give `transfer.fit` and `sweep`, dispatched into spec objects.

A user writes `fit(backbone, data, cut=..., data_dir=..., cache_dir=..., epochs=...)` as the
README shows (as Keras' `Model.fit` takes keywords); inside, those keywords become the specs
that travel down the layers: `BackboneSpec` (where the graph is fed and cut), `DataSpec` (which
data, split how), `CacheSpec` (the feature cache and what extracts into it), and whatever the
caller keeps for itself (`TrainingSettings`' fields for `fit`, the axes for `sweep`). An unknown
keyword is one line naming it and the valid ones, closest first.
"""
from __future__ import annotations

from transfer.data.spec import FIELDS as DATA_FIELDS
from transfer.errors import check_keywords
from transfer.features.inputs import specs_of
from transfer.features.spec import CacheSpec
from transfer.graph.spec import FIELDS as BACKBONE_FIELDS

# The keyword a user gives -> the CacheSpec field it sets.
CACHE_KEYWORDS = {"cache_dir": "dir", "cache_dtype": "dtype", "engine": "engine", "runner": "runner", "pool": "pool",
                  "precision": "precision", "calibration_size": "calibration_size"}
BACKBONE_KEYWORDS = tuple(name for name in BACKBONE_FIELDS if name != "path")
DATA_KEYWORDS = tuple(name for name in DATA_FIELDS if name != "data")


def dispatch(owner: str, backbone, data, options: dict, *, cache: CacheSpec | None = None, own=(),
             cache_keywords=tuple(CACHE_KEYWORDS)) -> tuple:
    """(backbone: a Backbone or BackboneSpec, DataSpec, CacheSpec, the keywords in `own`) from a
    call's `options`; a keyword of none of them is a one-line TransferError."""
    check_keywords(owner, options, (*BACKBONE_KEYWORDS, *DATA_KEYWORDS, *cache_keywords, *own))
    mine = {key: value for key, value in options.items() if key in own}
    cached = {CACHE_KEYWORDS[key]: value for key, value in options.items() if key in cache_keywords}
    sources = {key: value for key, value in options.items() if key not in own and key not in cache_keywords}
    backbone, data = specs_of(backbone, data, sources, owner)
    return backbone, data, CacheSpec.of(cache, **cached), mine

