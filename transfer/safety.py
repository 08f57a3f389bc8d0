"""A graph is code: refuse the ops a feature extractor has no reason to run.

Only the ops a cut actually needs are checked (functions they call included), so a graph
that merely *contains* a saver still loads. The user can opt in op by op (`allow_ops`).
"""
from __future__ import annotations

import re
from collections.abc import Iterable

import tensorflow as tf

from transfer.errors import TransferError

# File system access, Python callbacks, and everything that runs user-supplied code or I/O.
_REFUSED = re.compile(
    r"^(ReadFile|WriteFile|MatchingFiles|ImmutableConst|ShardedFilename|ShardedFilespec|"
    r"Save|SaveV2|SaveSlices|Restore|RestoreV2|RestoreSlice|MergeV2Checkpoints|"
    r"PyFunc|PyFuncStateless|EagerPyFunc|"
    r".*Reader.*|.*RecordDataset.*|TextLineDataset.*|FixedLengthRecordDataset.*|"
    r"Write.*Summary|WriteSummary|CreateSummaryFileWriter|SummaryWriter|FlushSummaryWriter|"
    r"LoadAndRemapMatrix|DebugIdentity.*|DebugNumericSummary.*|"
    r"LoadTPUEmbedding.*|RetrieveTPUEmbedding.*|ExperimentalDatasetToTFRecord|DatasetToTFRecord|"
    r"SnapshotDataset.*|SaveDataset.*|LoadDataset.*|.*CacheDataset.*)$"
)


def is_refused(op_type: str) -> bool:
    return bool(_REFUSED.match(op_type))


def check_ops(ops: Iterable[tf.Operation], library: dict, allow: Iterable[str] = ()) -> None:
    """Raise on the first refused op among `ops` and the functions they call."""
    allowed = set(allow)
    for op_type, where in _walk(((op.type, op.name, op.node_def) for op in ops), library, set()):
        if is_refused(op_type) and op_type not in allowed:
            raise TransferError(
                f"the cut needs op {where!r} of type {op_type}, which reads/writes files or runs "
                f"Python; refused unless you allow it (allow_ops=[{op_type!r}], --allow-op {op_type})")


def _walk(nodes, library: dict, seen_functions: set):
    for op_type, where, node_def in nodes:
        yield op_type, where
        for name in _called_functions(node_def, op_type, library):
            if name in seen_functions:
                continue
            seen_functions.add(name)
            body = ((n.op, f"{name}/{n.name}", n) for n in library[name].node_def)
            yield from _walk(body, library, seen_functions)


def _called_functions(node_def, op_type: str, library: dict) -> list[str]:
    names = [op_type] if op_type in library else []
    for value in node_def.attr.values():
        if value.HasField("func"):
            names.append(value.func.name)
        names.extend(f.name for f in value.list.func)
    return [n for n in names if n in library]
