"""A graph is code: check it as protobufs before TensorFlow imports, loads or runs any of it.

- **Ops** (`check_ops`, `check_meta_graph`): every op that can run must be on the allow-list of
  pure-compute op types (`transfer.op_allowlist`), walking into the functions it calls (loop
  bodies, branches, function calls); a function that cannot be found is refused, not skipped.
  The user opts in op type by op type (`allow_ops=`, `--allow-op TYPE`).
- **Sizes** (`check_constants`, `check_memory`): a Const may claim more values than it holds
  (TensorFlow repeats the last one), so a 200-byte file can ask for gigabytes; what constants
  expand to is capped, and a graph larger than the memory available is refused.

Works on `NodeDef`/`FunctionDef` protos only, so nothing here can run anything.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable

from transfer.errors import TransferError
from transfer.op_allowlist import ALLOWED_OPS, RESTORE_OPS

# Constants may expand (fill values they do not hold) to at most this, or the file's size.
EXPANSION_FLOOR = 64 * 2**20
_CALLER_ROLES = {"body": "the body of loop", "cond": "the condition of loop", "then_branch": "a branch of",
                 "else_branch": "a branch of", "branches": "a branch of"}


def check_ops(ops: Iterable, library: dict, allow: Iterable[str] = (), source: str = "the graph") -> None:
    """Raise unless every op in `ops` (imported `tf.Operation`s, or `NodeDef`s) and every
    function they call runs only allowed op types."""
    checker = _Checker(library, frozenset(allow), source=source)
    for op in ops:
        checker.node(getattr(op, "node_def", op), "")


def check_meta_graph(meta_graph, allow: Iterable[str] = (), source: str = "SavedModel") -> None:
    """Check what loading a SavedModel's MetaGraph can run: every node of its graph (signatures,
    init ops, table initializers, the saver's restore op) and every function of its library (the
    TF2 loader revives them and runs resource initializers among them). Only the saver's save
    op, which no loader runs, is skipped; its restore op may read the model's checkpoint."""
    graph_def = meta_graph.graph_def
    library = {f.signature.name: f for f in graph_def.library.function}
    nodes = {node.name: node for node in graph_def.node}
    save_only, restore_only = _saver_parts(nodes, meta_graph.saver_def if meta_graph.HasField("saver_def") else None)
    checker = _Checker(library, frozenset(allow), source=source)
    for node in graph_def.node:
        if node.name not in save_only | restore_only:
            checker.node(node, "")
    restoring = dataclasses.replace(checker, extra=RESTORE_OPS)
    for name in restore_only:
        restoring.node(nodes[name], "in the restore op: ")
    save_functions = _Checker(library, frozenset(), walk_only=True)
    for name in save_only:
        save_functions.node(nodes[name], "")
    for name in library:
        if name not in checker.visited | save_functions.visited:
            checker.function(name, f"in function {name!r}")


def check_constants(graph_def, file_size: int, source: str = "graph") -> int:
    """Raise if a constant (graph or function library) holds more values than its shape or
    expands to more than allowed; return the bytes all constants take once materialised."""
    budget = max(EXPANSION_FLOOR, file_size)
    total = expanded = 0
    for node_name, tensor in _tensor_protos(graph_def):
        declared, held = _tensor_bytes(tensor, node_name, source)
        total += declared
        if declared > held:
            expanded += declared
            if expanded > budget:
                raise TransferError(
                    f"{source}: Const {node_name!r} declares {_size(declared)} of values but holds {_size(held)}; "
                    f"refused: constants may expand to at most {_size(budget)} in all (the larger of "
                    f"{_size(EXPANSION_FLOOR)} and the file's size)")
    return total


def check_memory(needed: int, what: str) -> None:
    """Raise if `needed` bytes exceed the memory available now."""
    available = available_memory()
    if available is not None and needed > available:
        raise TransferError(f"{what} needs about {_size(needed)} of memory and {_size(available)} is available; "
                            "refused (use a machine with more memory)")


def available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# -- walking ops and functions -------------------------------------------------------------------


@dataclasses.dataclass
class _Checker:
    library: dict
    allow: frozenset
    source: str = "the graph"
    extra: frozenset = frozenset()  # allowed in this part only (the saver's restore op)
    walk_only: bool = False         # record the functions reached, check nothing
    visited: set = dataclasses.field(default_factory=set)

    def node(self, node_def, where: str) -> None:
        if node_def.op in self.library:
            self.function(node_def.op, _within(where, f"in function {node_def.op!r} called by {node_def.name!r}"))
        elif not self.walk_only:
            self._check_type(node_def.op, node_def.name, where)
        for role, name in _called_functions(node_def):
            if name in self.library:
                role_text = _CALLER_ROLES.get(role, f"function {name!r} called by")
                self.function(name, _within(where, f"in {role_text} {node_def.name!r}"))
            elif not self.walk_only:
                self._check_unknown_function(name, node_def, where)

    def function(self, name: str, where: str) -> None:
        if name in self.visited:
            return
        self.visited.add(name)
        for node_def in self.library[name].node_def:
            self.node(node_def, where)

    def _check_type(self, op_type: str, op_name: str, where: str) -> None:
        if op_type in ALLOWED_OPS or op_type in self.extra or op_type in self.allow:
            return
        raise TransferError(
            f"{self.source} runs op {op_name!r} of type {op_type}{f' ({where})' if where else ''}, which is not on "
            "transfer's allow-list of pure-compute ops (it may read or write files, run Python, or reach the "
            f"network); refused. If you trust this graph: --allow-op {op_type} (allow_ops=[{op_type!r}])")

    def _check_unknown_function(self, name: str, node_def, where: str) -> None:
        from tensorflow.python.framework import op_def_registry

        if op_def_registry.get(name) is not None:  # a gradient or call naming a primitive op
            self._check_type(name, node_def.name, where)
            return
        raise TransferError(f"{self.source}: op {node_def.name!r} ({node_def.op}{f', {where}' if where else ''}) "
                            f"calls function {name!r}, "
                            "which the graph does not define; refused: what cannot be checked does not run")


def _within(outer: str, inner: str) -> str:
    return f"{outer}, {inner}" if outer else inner


def _called_functions(node_def) -> list[tuple[str, str]]:
    """(attribute, function name) of every function an op's attributes name."""
    found = []
    for key, value in node_def.attr.items():
        if value.HasField("func"):
            found.append((key, value.func.name))
        found.extend((key, func.name) for func in value.list.func)
    return found


def _ancestors(nodes: dict, roots: Iterable[str]) -> set[str]:
    seen, stack = set(), [r for r in roots if r in nodes]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(i.lstrip("^").split(":")[0] for i in nodes[name].input)
    return seen & nodes.keys()


def _saver_parts(nodes: dict, saver_def) -> tuple[set[str], set[str]]:
    """(nodes only the save op needs, nodes only the restore op needs): the save op writes a
    checkpoint and no loader runs it; the restore op reads the model's own variables."""
    if saver_def is None:
        return set(), set()
    save = _ancestors(nodes, [saver_def.save_tensor_name.split(":")[0]])
    save_only = save - _ancestors(nodes, nodes.keys() - save)
    restore = _ancestors(nodes, [saver_def.restore_op_name]) - save_only
    restore_only = restore - _ancestors(nodes, nodes.keys() - save_only - restore)
    return save_only, restore_only


# -- constants ------------------------------------------------------------------------------


def _tensor_protos(graph_def):
    nodes = [(node.name, node) for node in graph_def.node]
    for function in graph_def.library.function:
        nodes += [(f"{function.signature.name}/{node.name}", node) for node in function.node_def]
    for name, node in nodes:
        for value in node.attr.values():
            if value.HasField("tensor"):
                yield name, value.tensor
            for tensor in value.list.tensor:
                yield name, tensor


_VALUE_FIELDS = ("half_val", "float_val", "double_val", "int_val", "string_val", "int64_val", "bool_val",
                 "uint32_val", "uint64_val", "resource_handle_val", "variant_val")
_COMPLEX_FIELDS = ("scomplex_val", "dcomplex_val")


def _tensor_bytes(tensor, node_name: str, source: str) -> tuple[int, int]:
    """(bytes the tensor's shape declares, bytes its content holds)."""
    shape = tensor.tensor_shape
    if shape.unknown_rank or any(d.size < 0 for d in shape.dim):
        raise TransferError(f"{source}: Const {node_name!r} has no fully known shape; refused")
    count = math.prod(d.size for d in shape.dim)
    itemsize = _itemsize(tensor.dtype)
    if tensor.tensor_content:
        held = len(tensor.tensor_content)
        if held != count * itemsize:
            raise TransferError(f"{source}: Const {node_name!r} declares {count} values ({_size(count * itemsize)}) "
                                f"but holds {_size(held)}; refused (corrupt or crafted)")
        return held, held
    values = sum(len(getattr(tensor, f)) for f in _VALUE_FIELDS) + sum(
        len(getattr(tensor, f)) // 2 for f in _COMPLEX_FIELDS)
    if values > count:
        raise TransferError(f"{source}: Const {node_name!r} holds {values} values for a shape of {count}; refused")
    return count * itemsize, values * itemsize


def _itemsize(dtype_enum: int) -> int:
    from tensorflow.python.framework import dtypes

    try:
        dtype = dtypes.as_dtype(dtype_enum)
    except TypeError:
        return 8
    return dtype.size if dtype.size else 8  # strings, resources, variants: at least a pointer each


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
