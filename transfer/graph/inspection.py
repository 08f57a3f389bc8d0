"""`transfer inspect`: what a backbone file holds and where it can be cut, as a plain dict.

The dict is the `--json` output; `format_report` renders the same dict as text.
"""
from __future__ import annotations

import tensorflow as tf

from transfer.graph import cuts as cut_lib
from transfer.graph.backbone import Backbone
from transfer.graph.feature_info import batch_mixed, feature_info
from transfer.graph.analysis import GraphInfo, format_shape, import_graph_def
from transfer.tables import format_table
from transfer.text import printable
from transfer.graph.loading import DEFAULT_SIGNATURE, HUB_SIGNATURE, load_graph

TOP_OPS = 12


def inspect_graph(path, signature=None, all_tensors: bool = False, cut=None, layers: bool = False, inputs=None,
                  feeds=None, allow_ops=(), max_memory=None) -> dict:
    """The report; with `cut`, also where each cut resolves (checked as a Backbone would); with
    `inputs`/`feeds`, of the graph as fed there (`Backbone`). Nothing of the graph runs: a
    SavedModel is checked (`transfer.graph.safety`) before it loads."""
    loaded = load_graph(path, signature, allow_ops)
    fed = inputs is not None or bool(feeds)
    backbone = Backbone(loaded, cut=cut or "auto", inputs=inputs, feeds=feeds, allow_ops=allow_ops,
                        max_memory=max_memory) \
        if cut or fed else None
    info = backbone.info if backbone else GraphInfo(import_graph_def(loaded.graph_def, str(loaded.path), wrapped=False))
    info.require_placeholder(str(loaded.path))
    outputs = backbone.outputs if backbone else info.output_tensors(loaded.outputs)
    auto = cut_lib.resolve_cut(info, cut_lib.AUTO, outputs) if outputs else None
    aliases = {op: name for name, op in loaded.inputs.items()}
    report = {
        "path": str(loaded.path),
        "kind": loaded.kind,
        "signature": loaded.signature,
        "signature_note": _signature_note(loaded, signature),
        "size_bytes": loaded.size_bytes,
        "fingerprint": loaded.fingerprint,
        "nodes": len(info.operations),
        "inputs": [dict(_tensor_row(op.outputs[0]), name=op.name, alias=aliases.get(op.name))
                   for op in info.placeholders],
        "outputs": [dict(_tensor_row(tensor), key=key if loaded.outputs else None) for key, tensor in outputs.items()],
        "input_hints": [hint for hint in (info.image_input_hint(op.outputs[0]) for op in info.placeholders) if hint],
        "feeds": backbone.feed_values if backbone else {},
        "op_counts": dict(info.op_counts().most_common()),
        "weight_layers": len(info.weight_layers),
        "auto": {"tensor": auto.name, "reason": auto.reason} if auto else None,
        "candidates": _candidates(backbone.graph_def if backbone else loaded.graph_def, info,
                                  auto.tensor if auto else None),
    }
    if backbone:
        report["cuts"] = [dict(_tensor_row(c.tensor), spec=c.spec, reason=c.reason) for c in backbone.cuts]
    if layers:
        from transfer.graph.thaw_plan import describe_layers

        report["layers"] = describe_layers(backbone)
    if all_tensors:
        report["tensors"] = [dict(_tensor_row(t), op=op.type) for op in info.operations for t in op.outputs]
    return report


def _signature_note(loaded, asked) -> str | None:
    """Why a SavedModel signature nobody asked for was used (TF Hub modules have no serving_default)."""
    if asked is not None or loaded.signature in (None, DEFAULT_SIGNATURE):
        return None
    why = "the TF Hub convention" if loaded.signature == HUB_SIGNATURE else "the only one"
    return f"no {DEFAULT_SIGNATURE!r} signature: used {loaded.signature!r} ({why}); --signature chooses another"


def _candidates(graph_def, info: GraphInfo, auto) -> list[dict]:
    """Candidate cuts with channels and stride, less those whose first axis only looks like the
    batch; the tensor `auto` picks is marked (and listed). `graph_def`: what `info` imported."""
    mixed = batch_mixed(graph_def, info, info.candidate_cuts)
    tensors = [t for t in info.candidate_cuts if t.name not in mixed]
    auto_name = auto.name if auto is not None else None
    if auto is not None and auto_name not in {t.name for t in tensors}:
        tensors.append(auto)
    details = feature_info(graph_def, info, tensors)
    return [dict(_tensor_row(t), op=t.op.type, auto=t.name == auto_name, **details[t.name]) for t in tensors]


def _tensor_row(tensor) -> dict:
    """A tensor for the report; its shape a list of ints and None (None for an unknown rank)."""
    shape = tensor.shape
    return {"tensor": tensor.name, "dtype": tensor.dtype.name, "shape": None if shape.rank is None else shape.as_list()}


def _shape(row) -> str:
    return format_shape(tf.TensorShape(row["shape"]))


def format_report(report: dict) -> str:
    """The report as text: every line `printable` (names come from the file), table cells
    escaped before they are aligned."""
    lines = [
        f"{report['path']}",
        f"  {report['kind']}" + (f" (signature {report['signature']})" if report["signature"] else "")
        + f", {report['size_bytes'] / 1e6:.1f} MB, {report['nodes']} ops, fingerprint {report['fingerprint'][:12]}",
        *([f"  {report['signature_note']}"] if report["signature_note"] else []),
        "inputs:",
        *_table([(r["name"] + (f" ({r['alias']})" if r["alias"] and r["alias"] != r["name"] else ""),
                  r["dtype"], _shape(r)) for r in report["inputs"]]),
        *(f"  note: {hint}" for hint in report["input_hints"]),
        *(f"  fed a constant: {name} = {value}" for name, value in report["feeds"].items()),
        "outputs:",
        *_table([(r["key"] or "", r["tensor"], r["dtype"], _shape(r)) for r in report["outputs"]] or [("(none)",)]),
    ]
    counts = list(report["op_counts"].items())
    shown = ", ".join(f"{op} {n}" for op, n in counts[:TOP_OPS])
    more = f", +{len(counts) - TOP_OPS} more types" if len(counts) > TOP_OPS else ""
    lines += [f"ops: {shown}{more}", f"weight layers: {report['weight_layers']}"]
    if "tensors" in report:
        lines.append(f"tensors ({len(report['tensors'])}):")
        lines += _table([("tensor", "op", "dtype", "shape")]
                        + [(t["tensor"], t["op"], t["dtype"], _shape(t)) for t in report["tensors"]])
    else:
        lines.append(f"candidate cuts ({len(report['candidates'])}; --all lists every tensor):")
        lines += _table([("", "tensor", "op", "shape", "channels", "stride")] + [
            ("*" if c["auto"] else "", c["tensor"], c["op"], _shape(c), _blank(c["channels"]), _blank(c["stride"]))
            for c in report["candidates"]])
    if report["auto"]:
        lines.append(f"* auto = {report['auto']['tensor']}: {report['auto']['reason']}")
    for c in report.get("cuts", []):
        lines.append(f"cut {c['spec']!r} = {c['tensor']} {c['dtype']} {_shape(c)} ({c['reason']})")
    if "layers" in report:
        before = "the cut" if len(report.get("cuts", [])) < 2 else "the cuts"
        lines.append(f"weight layers before {before} ({len(report['layers'])}; --thaw N trains the first N):")
        lines += _table([("#", "scope", "ops", "weights", "frozen statistics", "parameters")] + [
            (r["index"], r["scope"], "+".join(r["ops"]), " ".join(r["weights"]), " ".join(r["statistics"]) or "-",
             r["parameters"]) for r in report["layers"]])
    return "\n".join(map(printable, lines))


def _blank(value) -> str:
    return "" if value is None else str(value)


def _table(rows) -> list[str]:
    return format_table(rows, indent="  ")
