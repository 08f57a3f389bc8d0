"""A graph is code: check it as protobufs before TensorFlow imports, loads or runs any of it.

- **Ops** (`check_ops`, `check_meta_graph`): every op that can run must be on the allow-list of
  pure-compute op types (`transfer.graph.op_allowlist`), walking into the functions it calls (loop
  bodies, branches, function calls); a function that cannot be found is refused, not skipped.
  The user opts in op type by op type (`allow_ops=`, `--allow-op TYPE`).
- **Function libraries** (`check_library`): a function that calls itself, or calls nested
  deeper than TensorFlow's import can follow, crashes the process on import: refused first.
- **Sizes** (`check_constants`): a Const may claim more values than it holds (TensorFlow repeats
  the last one), so a 200-byte file can ask for gigabytes; what constants expand to is capped.
  (What the tensors computed at run time take: `transfer.graph.memory`.)

Works on `NodeDef`/`FunctionDef` protos only, so nothing here can run anything.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

from transfer import _compat
from transfer.errors import TransferError
from transfer.graph.memory import format_size
from transfer.graph.op_allowlist import ALLOWED_OPS, RESTORE_OPS

# Constants may expand (fill values they do not hold) to at most this, or the file's size.
EXPANSION_FLOOR = 64 * 2**20
# Function calls nested deeper than this are refused: TensorFlow's import recurses through them
# (5,000 levels crash it) and real graphs nest a handful.
MAX_CALL_DEPTH = 100
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


def check_library(graph_def, source: str = "graph") -> None:
    """Raise if the function library calls itself (`f -> g -> f`, through any op or attribute
    that names a function, or a registered gradient) or nests calls deeper than
    `MAX_CALL_DEPTH`: TensorFlow's import recurses through calls and crashes the process
    (a segmentation fault) on either, so this runs before any import."""
    calls = _call_graph(graph_def.library)
    depth: dict[str, int] = {}  # calls nested below each finished function (1: calls none)
    on_path: dict[str, int] = {}  # the functions on the current path, by position
    for root in calls:
        if root in depth:
            continue
        path, pending = [root], [iter(calls[root])]
        on_path[root] = 0
        while path:
            callee = next(pending[-1], None)
            if callee is None:
                done = path.pop()
                pending.pop()
                del on_path[done]
                depth[done] = 1 + max((depth[c] for c in calls[done]), default=0)
                if depth[done] > MAX_CALL_DEPTH:
                    raise TransferError(f"{source}: function {done!r} nests calls {depth[done]} deep, more than "
                                        f"{MAX_CALL_DEPTH}; refused (TensorFlow cannot import it safely)")
            elif callee in on_path:
                cycle = " -> ".join([*path[on_path[callee]:], callee])
                raise TransferError(f"{source}: the function library calls itself ({cycle}); refused: "
                                    "TensorFlow cannot import a recursive function")
            elif callee not in depth:
                on_path[callee] = len(path)
                path.append(callee)
                pending.append(iter(calls[callee]))


def _call_graph(library) -> dict[str, list[str]]:
    """Each library function -> the library functions it calls or names as its gradient."""
    functions = {f.signature.name: f for f in library.function}
    gradients = {g.function_name: g.gradient_func for g in library.gradient}
    calls = {}
    for name, function in functions.items():
        named = [n.op for n in function.node_def] + [f for n in function.node_def for _, f in _called_functions(n)]
        named.append(gradients.get(name, ""))
        calls[name] = list(dict.fromkeys(f for f in named if f in functions))
    return calls


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
                    f"{source}: Const {node_name!r} declares {format_size(declared)} of values but holds "
                    f"{format_size(held)}; "
                    f"refused: constants may expand to at most {format_size(budget)} in all (the larger of "
                    f"{format_size(EXPANSION_FLOOR)} and the file's size)")
    return total


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
        """Check `node_def` and, depth first, every function it calls (a loop, not recursion:
        nesting depth is the file's to choose)."""
        stack = [(node_def, where)]
        while stack:
            node_def, where = stack.pop()
            for name, inner in reversed(self._calls(node_def, where)):
                if name not in self.visited:
                    self.visited.add(name)
                    stack.extend((called, inner) for called in reversed(self.library[name].node_def))

    def function(self, name: str, where: str) -> None:
        if name not in self.visited:
            self.visited.add(name)
            for node_def in self.library[name].node_def:
                self.node(node_def, where)

    def _calls(self, node_def, where: str) -> list[tuple[str, str]]:
        """Check the op itself; return (function, where it is called) for the library functions it calls."""
        calls = []
        if node_def.op in self.library:
            calls.append((node_def.op, _within(where, f"in function {node_def.op!r} called by {node_def.name!r}")))
        elif not self.walk_only:
            self._check_type(node_def.op, node_def.name, where)
        for role, name in _called_functions(node_def):
            if name in self.library:
                role_text = _CALLER_ROLES.get(role, f"function {name!r} called by")
                calls.append((name, _within(where, f"in {role_text} {node_def.name!r}")))
            elif not self.walk_only:
                self._check_unknown_function(name, node_def, where)
        return calls

    def _check_type(self, op_type: str, op_name: str, where: str) -> None:
        if op_type in ALLOWED_OPS or op_type in self.extra or op_type in self.allow:
            return
        raise TransferError(
            f"{self.source} runs op {op_name!r} of type {op_type}{f' ({where})' if where else ''}, which is not on "
            "transfer's allow-list of pure-compute ops (it may read or write files, run Python, or reach the "
            f"network); refused. If you trust this graph: --allow-op {op_type} (allow_ops=[{op_type!r}])")

    def _check_unknown_function(self, name: str, node_def, where: str) -> None:
        if _compat.is_registered_op(name):  # a gradient or call naming a primitive op
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
            raise TransferError(f"{source}: Const {node_name!r} declares {count} values "
                                f"({format_size(count * itemsize)}) but holds {format_size(held)}; "
                                "refused (corrupt or crafted)")
        return held, held
    values = sum(len(getattr(tensor, f)) for f in _VALUE_FIELDS) + sum(
        len(getattr(tensor, f)) // 2 for f in _COMPLEX_FIELDS)
    if values > count:
        raise TransferError(f"{source}: Const {node_name!r} holds {values} values for a shape of {count}; refused")
    return count * itemsize, values * itemsize


def _itemsize(dtype_enum: int) -> int:
    import tensorflow as tf

    try:
        dtype = tf.as_dtype(dtype_enum)
    except TypeError:
        return 8
    return dtype.size if dtype.size else 8  # strings, resources, variants: at least a pointer each
