"""How much memory a cut asks for, read off the graph's static shapes before anything runs.

A graph of a few hundred bytes can ask for gigabytes at run time (`Fill([64000, 64000])`,
`Tile(x, [1, 8000, 8000, 1])`): no constant is large, the shapes are. Importing a graph infers
every tensor's static shape; with the batch as 1 (and any other size the data decides as 1, so
the figure is a lower bound), the tensors a cut needs are added up while they are live, op by op
in the graph's order, function bodies included, and the peak is compared with a limit tied to
the memory available (`--max-memory`, `max_memory=`). Sizes that only the data decides fail when
TensorFlow allocates them: `memory_errors` turns that into one line that names the op.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re

from transfer import _compat
from transfer.errors import TransferError

# The share of the available memory one example's tensors may take by default: a batch takes
# more, and TensorFlow needs room besides.
DEFAULT_SHARE = 0.5
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(text, flag: str = "--max-memory") -> int:
    """`16G`, `512MiB`, `1.5g`, `1000000` (bytes) -> bytes; units are powers of 1024."""
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    match = _SIZE.fullmatch(str(text))
    if match is None or match.group(2).lower() not in _UNITS or float(match.group(1)) <= 0:
        raise TransferError(f"{flag} {text!r}: give a size such as 512M, 16G or 1.5T (bytes, K, M, G, T)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(n: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def available_memory() -> int | None:
    """What this process may still allocate: the machine's available memory, lowered by a
    container's memory limit (cgroup v2) and by an address-space limit (`ulimit -v`)."""
    found = [_meminfo_available(), _cgroup_available(), _address_space_available()]
    known = [n for n in found if n is not None]
    return min(known) if known else None


def memory_limit(max_memory=None) -> tuple[int | None, str]:
    """(bytes one example's tensors may take, how that was decided)."""
    if max_memory is not None:
        return parse_size(max_memory), "--max-memory"
    available = available_memory()
    if available is None:
        return None, "unknown"
    return int(available * DEFAULT_SHARE), f"half of the {format_size(available)} available; --max-memory raises it"


def check_memory(needed: int, what: str) -> None:
    """Raise if `needed` bytes exceed the memory available now."""
    available = available_memory()
    if available is not None and needed > available:
        raise TransferError(f"{what} needs about {format_size(needed)} of memory and {format_size(available)} is "
                            "available; refused (use a machine with more memory)")


# -- static sizes ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Peak:
    """The most memory live at once, and the largest tensor live then."""

    bytes: int = 0
    op_name: str = ""
    op_type: str = ""
    tensor_bytes: int = 0
    shape: str = ""


def check_cut_memory(graph, library: dict, ops: list, limit: int | None, reason: str, source: str) -> Peak:
    """Raise if computing `ops` (imported `tf.Operation`s in graph order: what a cut needs; the
    functions they call from `library`, by name) keeps more than `limit` bytes live at once for
    one example; return the peak."""
    peak = _Sizer(graph, library).peak(ops)
    if limit is not None and peak.bytes > limit:
        raise TransferError(
            f"{source}: op {peak.op_name!r} ({peak.op_type}) makes a tensor of {format_size(peak.tensor_bytes)} "
            f"({peak.shape}) for one example, and the cut needs {format_size(peak.bytes)} live at once; over the "
            f"limit of {format_size(limit)} ({reason}); refused")
    return peak


class _Sizer:
    def __init__(self, graph, library: dict):
        self.graph, self.library, self._bodies = graph, library, {}

    def peak(self, ops: list) -> Peak:
        """Walk `ops` in order: each op's outputs become live, live until their last reader (or
        the end, for what nothing reads: the cut); a function call adds its body's peak while
        it runs."""
        last_use = {t.name: position for position, op in enumerate(ops) for t in op.inputs}
        live, live_bytes, best = {}, 0, Peak()
        for position, op in enumerate(ops):
            made = {t.name: _tensor_peak(op, t) for t in op.outputs}
            live.update(made)
            live_bytes += sum(p.bytes for p in made.values())
            inner = self._calls(op)
            if live_bytes + inner.bytes > best.bytes:
                largest = max([*live.values(), inner], key=lambda p: p.tensor_bytes)
                best = dataclasses.replace(largest, bytes=live_bytes + inner.bytes)
            for tensor in op.inputs:
                if last_use.get(tensor.name) == position and tensor.name in live:
                    live_bytes -= live.pop(tensor.name).bytes
        return best

    def _calls(self, op) -> Peak:
        """The largest peak among the bodies of the functions `op` calls (one runs at a time)."""
        names = [op.type] if op.type in self.library else []
        for value in op.node_def.attr.values():
            names += [value.func.name] if value.HasField("func") else []
            names += [f.name for f in value.list.func]
        return max((self._body_peak(name) for name in names if name in self.library), key=lambda p: p.bytes,
                   default=Peak())

    def _body_peak(self, name: str) -> Peak:
        """A function's peak, its inputs of unknown shape (what it makes from constants is known)."""
        if name not in self._bodies:
            import tensorflow as tf

            function = self.library[name]
            self._bodies[name] = Peak()  # a call to itself (refused on load) would not loop here
            try:
                with self.graph.as_default():
                    body = _compat.function_body_graph(
                        function, input_shapes=[tf.TensorShape(None)] * len(function.signature.input_arg))
            except (ValueError, TypeError, KeyError, tf.errors.OpError):
                return Peak()  # shapes unknown here: the run-time check remains
            self._bodies[name] = self.peak(body.get_operations())
        return self._bodies[name]


def _tensor_peak(op, tensor) -> Peak:
    shape = tensor.shape
    if shape.rank is None:
        return Peak(op_name=op.name, op_type=op.type, shape="unknown shape")
    size = math.prod(d or 1 for d in shape.as_list()) * (tensor.dtype.size or 8)
    dims = ", ".join(str(d) for d in shape.as_list())
    return Peak(size, op.name, op.type, size, f"{tensor.dtype.name} ({dims})")


# -- when the data decides ---------------------------------------------------------------------

_NODE = re.compile(r"\{\{node ([^}]+)\}\}")
_SHAPE = re.compile(r"OOM when allocating tensor with shape\s*\[([^\]]*)\]")


@contextlib.contextmanager
def memory_errors():
    """A failed allocation (TensorFlow's ResourceExhaustedError, Python's MemoryError) as one
    TransferError line naming the op, instead of a traceback from inside a training step; also
    a decorator (`@memory_errors()`)."""
    try:
        yield
    except MemoryError:
        raise TransferError("out of memory; lower --batch-size, or use a machine with more memory") from None
    except Exception as error:  # noqa: BLE001 - only TensorFlow's out-of-memory errors are translated
        if not _out_of_memory(error):
            raise
        node, shape = _NODE.search(str(error)), _SHAPE.search(str(error))
        what = f"op {node.group(1)!r}" if node else "an op"
        tensor = f"a tensor of shape [{shape.group(1)}]" if shape else "its result"
        raise TransferError(f"out of memory: {what} could not allocate {tensor}; lower --batch-size (or "
                            "--max-memory), or use a machine with more memory") from None


def _out_of_memory(error: Exception) -> bool:
    """TensorFlow's ResourceExhaustedError; or the InvalidArgumentError its constant folding raises
    when it cannot allocate a constant it folds (`Fill` of constant dims): "Cannot parse tensor
    from proto" (seen on TF 2.21 under `ulimit -v`)."""
    name = type(error).__name__
    return name == "ResourceExhaustedError" or (
        name == "InvalidArgumentError" and "Cannot parse tensor from proto" in str(error))


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        used = int(open("/sys/fs/cgroup/memory.current").read().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def _address_space_available() -> int | None:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/statm") as handle:
            used = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError, IndexError):
        return None
    return max(soft - used, 0)
