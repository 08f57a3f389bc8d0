"""Turn what a user writes as a cut into a tensor of the graph.

Accepted, in order: `auto`; `candidates` (every candidate cut `transfer inspect` lists, for a
cut sweep or a multi-layer head; expanded by the backbone); a tensor name (`op:1`); a
signature's output key (`note`); an op name; a unique path suffix (`conv5_block3_out/Relu`); a
unique name scope (`conv5_block3_out` finds the op that leaves `resnet50_1/conv5_block3_out_1/`).
TF's uniquifying suffixes (`_1`) may be left out.
"""
from __future__ import annotations

import dataclasses
import difflib
import re

import tensorflow as tf

from transfer.errors import TransferError
from transfer.graph.analysis import GraphInfo, component_matches, find_penultimate

AUTO = "auto"
CANDIDATES = "candidates"
_TENSOR_NAME = re.compile(r"^(?P<op>.+):(?P<index>\d+)$")
_UNIQUIFIER = re.compile(r"_\d+$")


@dataclasses.dataclass(frozen=True)
class Cut:
    spec: str  # as the user wrote it: the key of this feature
    tensor: tf.Tensor
    reason: str  # how the spec was resolved; for `auto`, why this tensor

    @property
    def name(self) -> str:
        return self.tensor.name


def split_cut_specs(cut) -> list[str]:
    """`"a,b"` or `["a", "b"]` -> `["a", "b"]`; `None` means `auto`."""
    if cut is None:
        return [AUTO]
    specs = [s.strip() for s in cut.split(",")] if isinstance(cut, str) else [str(s).strip() for s in cut]
    if not specs or any(not s for s in specs):
        raise TransferError(f"empty cut in {cut!r}: give an op or tensor name, a scope, or 'auto'")
    if len(set(specs)) != len(specs):
        raise TransferError(f"cut {cut!r} names the same tensor twice")
    return specs


def resolve_cut(info: GraphInfo, spec: str, outputs: dict[str, tf.Tensor]) -> Cut:
    """`outputs`: the graph's outputs by name (a signature's output keys), as `GraphInfo.output_tensors`."""
    if spec == AUTO:
        return _resolve_auto(info, outputs)
    tensor_match = _TENSOR_NAME.match(spec)
    if tensor_match and tensor_match["op"] in info.by_name:
        op, index = info.by_name[tensor_match["op"]], int(tensor_match["index"])
        if index >= len(op.outputs):
            raise TransferError(f"cut {spec!r}: op {op.name!r} has {len(op.outputs)} output(s); "
                                f"valid: {', '.join(t.name for t in op.outputs) or 'none'}")
        return Cut(spec, op.outputs[index], "tensor name")
    if spec in outputs:
        return Cut(spec, outputs[spec], "output name")
    if spec in info.by_name:
        return Cut(spec, _first_output(info.by_name[spec], spec), "op name")
    return _resolve_by_path(info, spec, outputs)


def _first_output(op: tf.Operation, spec: str) -> tf.Tensor:
    if not op.outputs:
        raise TransferError(f"cut {spec!r}: op {op.name!r} ({op.type}) has no output tensor to cut at")
    return op.outputs[0]


def _resolve_auto(info: GraphInfo, outputs: dict[str, tf.Tensor]) -> Cut:
    if not outputs:
        raise TransferError("cut 'auto': the graph has no output that depends on its input; name a cut")
    first = next(iter(outputs.values()))
    feature, why = find_penultimate(info, first)
    if feature is None:
        return Cut(AUTO, first, f"the graph's output: {why}")
    return Cut(AUTO, feature, why)


def _resolve_by_path(info: GraphInfo, spec: str, outputs: dict[str, tf.Tensor]) -> Cut:
    wanted = spec.strip("/").split("/")
    exact_ops, exact_scopes, loose_ops, loose_scopes = set(), set(), set(), set()
    for op in info.operations:
        parts = op.name.split("/")
        for start in range(len(parts) - len(wanted) + 1):
            window = parts[start:start + len(wanted)]
            if not all(component_matches(w, p) for w, p in zip(wanted, window)):
                continue
            exact = window == wanted
            end = start + len(wanted)
            if end == len(parts):
                (exact_ops if exact else loose_ops).add(op.name)
            else:
                (exact_scopes if exact else loose_scopes).add("/".join(parts[:end]))
    ops = exact_ops or loose_ops
    if ops:
        if len(ops) > 1:
            raise _ambiguous(spec, sorted(ops, key=info.position.get))
        (name,) = ops
        return Cut(spec, _first_output(info.by_name[name], spec), f"path suffix of {name!r}")
    scopes = exact_scopes or loose_scopes
    if not scopes:
        raise _unknown(info, spec, outputs)
    if len(scopes) > 1:
        raise _ambiguous(spec, sorted(scopes))
    (scope,) = scopes
    leaving = info.scope_outputs(scope)
    if len(leaving) != 1:
        if not leaving:
            raise TransferError(f"cut {spec!r}: scope {scope!r} has no float output that depends on the input")
        raise _ambiguous(spec, [op.name for op in leaving], what=f"scope {scope!r} has several outputs")
    return Cut(spec, leaving[0].outputs[0], f"output of scope {scope!r}")


def _ambiguous(spec: str, matches: list[str], what: str = "matches several") -> TransferError:
    shown = ", ".join(matches[:6]) + (f", … ({len(matches)} in all)" if len(matches) > 6 else "")
    return TransferError(f"cut {spec!r} is ambiguous: {what}: {shown}; give more of the name")


def _unknown(info: GraphInfo, spec: str, outputs: dict[str, tf.Tensor]) -> TransferError:
    """Suggest the closest cut names: output keys, whole op names and single scope components."""
    keys = {key: key for key in outputs if key not in info.by_name}  # a signature's output keys
    for tensor in info.candidate_cuts:
        keys.setdefault(tensor.op.name, tensor.op.name)
        for part in tensor.op.name.split("/")[:-1]:
            keys.setdefault(_UNIQUIFIER.sub("", part), tensor.op.name)
            keys.setdefault(part, tensor.op.name)
    prefixed = [k for k in keys if "/" not in k and k.startswith(spec)]
    close = prefixed + difflib.get_close_matches(spec, list(keys), n=8, cutoff=0.6)
    suggestions = list(dict.fromkeys(keys[k] for k in close))[:5]
    hint = f"closest: {', '.join(suggestions)}" if suggestions else "no similar name"
    return TransferError(f"unknown cut {spec!r}; {hint} (`transfer inspect` lists the candidates)")
