"""`transfer inspect`: what a backbone file holds and where it can be cut, as a plain dict.

The dict is the `--json` output; `format_report` renders the same dict as text.
"""
from __future__ import annotations

from transfer import cuts as cut_lib
from transfer.backbone import Backbone
from transfer.graph import GraphInfo, format_shape, import_graph_def
from transfer.loading import load_graph

TOP_OPS = 12


def inspect_graph(path, signature=None, all_tensors: bool = False, cut=None, layers: bool = False, inputs=None,
                  feeds=None, allow_ops=()) -> dict:
    """The report; with `cut`, also where each cut resolves (checked as a Backbone would); with
    `inputs`/`feeds`, of the graph as fed there (`Backbone`). Nothing of the graph runs: a
    SavedModel is checked (`transfer.safety`) before it loads."""
    loaded = load_graph(path, signature, allow_ops)
    fed = inputs is not None or bool(feeds)
    backbone = Backbone(loaded, cut=cut or "auto", inputs=inputs, feeds=feeds, allow_ops=allow_ops) \
        if cut or fed else None
    info = backbone.info if backbone else GraphInfo(import_graph_def(loaded.graph_def, str(loaded.path), wrapped=False))
    info.require_placeholder(str(loaded.path))
    outputs = info.outputs_named(list(loaded.outputs.values()))
    auto = None
    if outputs:
        cut = cut_lib.resolve_cut(info, cut_lib.AUTO, outputs)
        auto = {"tensor": cut.name, "reason": cut.reason}
    input_height = _height(info.placeholders[0].outputs[0])
    aliases = {op: name for name, op in loaded.inputs.items()}
    report = {
        "path": str(loaded.path),
        "kind": loaded.kind,
        "signature": loaded.signature,
        "size_bytes": loaded.size_bytes,
        "fingerprint": loaded.fingerprint,
        "nodes": len(info.operations),
        "inputs": [dict(_tensor_row(op.outputs[0]), name=op.name, alias=aliases.get(op.name))
                   for op in info.placeholders],
        "outputs": [_tensor_row(op.outputs[0]) for op in outputs],
        "input_hints": [hint for hint in (info.image_input_hint(op.outputs[0]) for op in info.placeholders) if hint],
        "feeds": backbone.feed_values if backbone else {},
        "op_counts": dict(info.op_counts().most_common()),
        "weight_layers": len(info.weight_layers),
        "auto": auto,
        "candidates": [
            dict(_tensor_row(op.outputs[0]), op=op.type, auto=auto is not None and op.outputs[0].name == auto["tensor"],
                 stride=_stride(input_height, op.outputs[0]))
            for op in info.candidate_cuts
        ],
    }
    if auto and not any(c["auto"] for c in report["candidates"]):
        tensor = info.graph.get_tensor_by_name(auto["tensor"])
        report["candidates"].append(dict(_tensor_row(tensor), op=tensor.op.type, auto=True,
                                         stride=_stride(input_height, tensor)))
    if backbone:
        report["cuts"] = [dict(_tensor_row(c.tensor), spec=c.spec, reason=c.reason) for c in backbone.cuts]
    if layers:
        from transfer.thawing import describe_layers

        report["layers"] = describe_layers(backbone)
    if all_tensors:
        report["tensors"] = [dict(_tensor_row(t), op=op.type) for op in info.operations for t in op.outputs]
    return report


def _tensor_row(tensor) -> dict:
    return {"tensor": tensor.name, "dtype": tensor.dtype.name, "shape": format_shape(tensor.shape)}


def _height(tensor):
    shape = tensor.shape
    return shape[1] if shape.rank == 4 else None


def _stride(input_height, tensor):
    """How much the cut shrinks the image (timm's `reduction`); None when not spatial or unknown."""
    height = _height(tensor)
    return input_height // height if input_height and height else None


def format_report(report: dict) -> str:
    lines = [
        f"{report['path']}",
        f"  {report['kind']}" + (f" (signature {report['signature']})" if report["signature"] else "")
        + f", {report['size_bytes'] / 1e6:.1f} MB, {report['nodes']} ops, fingerprint {report['fingerprint'][:12]}",
        "inputs:",
        *_table([(r["name"] + (f" ({r['alias']})" if r["alias"] and r["alias"] != r["name"] else ""),
                  r["dtype"], r["shape"]) for r in report["inputs"]]),
        *(f"  note: {hint}" for hint in report["input_hints"]),
        *(f"  fed a constant: {name} = {value}" for name, value in report["feeds"].items()),
        "outputs:",
        *_table([(r["tensor"], r["dtype"], r["shape"]) for r in report["outputs"]] or [("(none)",)]),
    ]
    counts = list(report["op_counts"].items())
    shown = ", ".join(f"{op} {n}" for op, n in counts[:TOP_OPS])
    more = f", +{len(counts) - TOP_OPS} more types" if len(counts) > TOP_OPS else ""
    lines += [f"ops: {shown}{more}", f"weight layers: {report['weight_layers']}"]
    if "tensors" in report:
        lines.append(f"tensors ({len(report['tensors'])}):")
        lines += _table([("tensor", "op", "dtype", "shape")]
                        + [(t["tensor"], t["op"], t["dtype"], t["shape"]) for t in report["tensors"]])
    else:
        lines.append(f"candidate cuts ({len(report['candidates'])}; --all lists every tensor):")
        lines += _table([("", "tensor", "op", "shape", "stride")] + [
            ("*" if c["auto"] else "", c["tensor"], c["op"], c["shape"], c["stride"] or "")
            for c in report["candidates"]])
    if report["auto"]:
        lines.append(f"* auto = {report['auto']['tensor']}: {report['auto']['reason']}")
    for c in report.get("cuts", []):
        lines.append(f"cut {c['spec']!r} = {c['tensor']} {c['dtype']} {c['shape']} ({c['reason']})")
    if "layers" in report:
        lines.append(f"weight layers before the cut ({len(report['layers'])}; --thaw N trains the first N):")
        lines += _table([("#", "scope", "ops", "weights", "frozen statistics", "parameters")] + [
            (r["index"], r["scope"], "+".join(r["ops"]), " ".join(r["weights"]), " ".join(r["statistics"]) or "-",
             r["parameters"]) for r in report["layers"]])
    return "\n".join(lines)


def _table(rows) -> list[str]:
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(map(len, rows)))]
    return ["  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
