"""Read a backbone from disk into a GraphDef: `.pb`/`.pbtxt`, a SavedModel, `.keras`/`.h5`.

Every way a file can be wrong ends here as one `TransferError` line: missing, corrupt, not a
graph, empty, over protobuf's 2 GB limit, a directory that is no SavedModel.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path

import tensorflow as tf
from google.protobuf import message, text_format

from transfer import _compat
from transfer.choices import EXAMPLE_PREFIX, EXAMPLES_DIR
from transfer.errors import TransferError
from transfer.files import update_with_file
from transfer.graph.freezing import FrozenGraph, freeze_function, freeze_keras_model
from transfer.graph.memory import check_memory
from transfer.graph.safety import check_constants, check_library, check_meta_graph

PROTOBUF_LIMIT = 2**31 - 1  # protobuf refuses to parse a message larger than 2 GiB
SERVING_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"
HUB_SIGNATURE = "default"  # TF Hub's convention (TF1 Hub modules have no serving_default)
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


class MissingBackbone(TransferError):
    """The backbone file is not where it was (a saved layer may still embed its graph)."""


@dataclasses.dataclass
class LoadedGraph:
    """A backbone as a GraphDef, with what the file said about its inputs and outputs."""

    path: Path
    kind: str  # "GraphDef", "SavedModel", "Keras"
    graph_def: tf.compat.v1.GraphDef
    fingerprint: str
    size_bytes: int
    inputs: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> placeholder op
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> tensor
    signature: str | None = None
    source: str = ""  # the path as the user gave it (`example:digits` stays that)


def resolve_path(path) -> Path:
    """`example:NAME` names a graph the package ships; anything else is a filesystem path."""
    text = os.fspath(path)
    if text.startswith(EXAMPLE_PREFIX):
        name = text[len(EXAMPLE_PREFIX):]
        shipped = sorted(p.stem for p in EXAMPLES_DIR.glob("*.pb"))
        if name not in shipped:
            raise TransferError(f"unknown example {name!r}; shipped examples: {', '.join(shipped) or 'none'}")
        return EXAMPLES_DIR / f"{name}.pb"
    resolved = Path(text).expanduser()
    if not resolved.exists():
        raise MissingBackbone(f"backbone {text!r} does not exist")
    if resolved.is_file() and resolved.name in ("saved_model.pb", "saved_model.pbtxt"):
        return resolved.parent.resolve()
    return resolved.resolve()


def load_graph(path, signature: str | None = None, allow_ops=()) -> LoadedGraph:
    """Read and check a backbone file (`transfer.graph.safety`: sizes, and for a SavedModel every op its
    loading can run, before TensorFlow loads it); `allow_ops` are op types the user trusts."""
    source = os.fspath(path)
    loaded = _load(resolve_path(path), signature, tuple(allow_ops))
    loaded.source = source if source.startswith(EXAMPLE_PREFIX) else str(loaded.path)
    return loaded


def _load(path: Path, signature: str | None, allow_ops: tuple) -> LoadedGraph:
    if path.is_dir():
        return _load_saved_model(path, signature, allow_ops)
    if signature is not None:
        raise TransferError(f"--signature {signature!r} applies to SavedModels only; {path} is a file")
    if path.suffix.lower() in KERAS_SUFFIXES:
        return _load_keras_file(path)
    size = path.stat().st_size
    _check_size(path, size)
    data = path.read_bytes()
    graph_def = _parse_graph_def(path, data)
    check_library(graph_def, str(path))
    check_memory(2 * check_constants(graph_def, size, str(path)), f"{path}")  # the proto and its tensors
    return LoadedGraph(path, "GraphDef", graph_def, fingerprint_bytes(data), size)


# -- a graph embedded in a saved model file ----------------------------------------------------


def describe_loaded(loaded: LoadedGraph) -> dict:
    """What `load_embedded` needs besides the GraphDef's bytes to give back the same LoadedGraph."""
    return {"path": str(loaded.path), "source": loaded.source, "kind": loaded.kind, "fingerprint": loaded.fingerprint,
            "size_bytes": loaded.size_bytes, "inputs": loaded.inputs, "outputs": loaded.outputs,
            "signature": loaded.signature}


def load_embedded(data: bytes, description: dict, sha256: str) -> LoadedGraph:
    """A backbone's frozen GraphDef stored inside a saved model file, checked like a file is."""
    source = description.get("source", "embedded graph")
    if fingerprint_bytes(data) != sha256:
        raise TransferError(f"the graph of backbone {source} embedded in the model file is corrupt (its SHA-256 "
                            "does not match the saved one)")
    graph_def = _parse_graph_def(Path(source), data)
    check_library(graph_def, f"embedded graph of {source}")
    check_constants(graph_def, len(data), f"embedded graph of {source}")
    return LoadedGraph(Path(description["path"]), description["kind"], graph_def, description["fingerprint"],
                       description["size_bytes"], dict(description["inputs"]), dict(description["outputs"]),
                       description["signature"], source)


def fingerprint_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint_path(path: Path) -> str:
    """SHA-256 of a file's content (as `fingerprint_bytes`), or of a directory's files: their
    relative names and contents."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        update_with_file(digest, file)
    return digest.hexdigest()


def _check_size(path: Path, size: int) -> None:
    if size > PROTOBUF_LIMIT:
        raise TransferError(
            f"{path} is {size / 2**30:.2f} GiB, over protobuf's 2 GiB limit for one GraphDef; "
            "save the model as a SavedModel (weights in variables/) instead")


def _parse_graph_def(path: Path, data: bytes) -> tf.compat.v1.GraphDef:
    if not data.strip():
        raise TransferError(f"{path} is empty: no graph in it")
    graph_def = tf.compat.v1.GraphDef()
    text_first = path.suffix.lower() == ".pbtxt"
    parsers = (_parse_text, _parse_binary) if text_first else (_parse_binary, _parse_text)
    problems = []
    for parse in parsers:
        problem = parse(graph_def, data)
        if problem is None and _looks_like_graph(graph_def):
            break
        problems.append(problem or "parsed, but holds no named nodes")
        graph_def.Clear()
    else:
        raise TransferError(f"{path} is not a TensorFlow GraphDef (truncated or corrupt?): {problems[0]}")
    if not graph_def.node:
        raise TransferError(f"{path} holds an empty graph (no nodes)")
    return graph_def


def _parse_binary(graph_def, data: bytes) -> str | None:
    try:
        graph_def.ParseFromString(data)
    except (message.DecodeError, RuntimeError, ValueError) as error:
        return f"binary protobuf: {_first_line(error)}"
    return None


def _parse_text(graph_def, data: bytes) -> str | None:
    try:
        text_format.Parse(data.decode("utf-8"), graph_def)
    except (text_format.ParseError, UnicodeDecodeError, message.DecodeError) as error:
        return f"text protobuf: {_first_line(error)}"
    return None


def _looks_like_graph(graph_def) -> bool:
    """Random bytes sometimes parse as protobuf; real nodes have a name and an op."""
    return all(node.name and node.op for node in graph_def.node)


_SCOPE_NAME = re.compile(r"[A-Za-z0-9_.\\/>-]*")  # what tf.name_scope accepts (Keras scopes every layer)


def _layer_names(layer):
    """The names of a Keras model and of its layers, nested models' included."""
    yield layer.name
    for inner in getattr(layer, "layers", ()):
        yield from _layer_names(inner)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


# -- SavedModel ------------------------------------------------------------------------------


def _load_saved_model(path: Path, signature: str | None, allow_ops: tuple) -> LoadedGraph:
    from tensorflow.core.protobuf import saved_model_pb2

    proto_file = next((path / n for n in ("saved_model.pb", "saved_model.pbtxt") if (path / n).exists()), None)
    if proto_file is None:
        raise TransferError(f"{path} is a directory but not a SavedModel (no saved_model.pb in it)")
    data = proto_file.read_bytes()
    saved_model = saved_model_pb2.SavedModel()
    try:
        if proto_file.suffix == ".pbtxt":
            text_format.Parse(data.decode("utf-8"), saved_model)
        else:
            saved_model.ParseFromString(data)
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError) as error:
        raise TransferError(f"{proto_file} is corrupt: {_first_line(error)}") from None
    if not saved_model.meta_graphs:
        raise TransferError(f"{proto_file} holds no MetaGraph")
    meta = _choose_meta_graph(saved_model.meta_graphs)
    tags = list(meta.meta_info_def.tags)
    name = _choose_signature(path, list(meta.signature_def), signature)
    _check_saved_model(path, meta, len(data), allow_ops)
    loaded = _load_signatures(path, tags)  # keep it alive: freezing reads its variables
    frozen = freeze_function(loaded.signatures[name])
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return LoadedGraph(path, "SavedModel", frozen.graph_def, fingerprint_path(path), size,
                       frozen.inputs, frozen.outputs, name)


def _check_saved_model(path: Path, meta, proto_size: int, allow_ops: tuple) -> None:
    """Everything loading can run or allocate, checked on the protobufs before TensorFlow loads."""
    check_library(meta.graph_def, str(path))
    constants = check_constants(meta.graph_def, proto_size, str(path))
    variables = sum(p.stat().st_size for p in (path / "variables").glob("*") if p.is_file())
    check_memory(2 * constants + 3 * variables, str(path))  # loaded, then frozen into constants
    check_meta_graph(meta, allow_ops, str(path))


def _choose_meta_graph(meta_graphs):
    """The MetaGraph tagged `serve`; else the untagged one (a TF1 Hub module's, beside `train`);
    else the first not for training."""
    tags = [set(m.meta_info_def.tags) for m in meta_graphs]
    for wanted in (lambda t: SERVING_TAG in t, lambda t: not t, lambda t: "train" not in t):
        found = [m for m, t in zip(meta_graphs, tags) if wanted(t)]
        if found:
            return found[0]
    return meta_graphs[0]


def _choose_signature(path: Path, available: list[str], wanted: str | None) -> str:
    usable = sorted(s for s in available if not s.startswith("__"))  # __saved_model_init_op
    if not usable:
        raise TransferError(f"SavedModel {path} has no signature to serve; re-export it with a serving signature")
    if wanted is None:
        for default in (DEFAULT_SIGNATURE, HUB_SIGNATURE):
            if default in usable:
                return default
        if len(usable) == 1:
            return usable[0]
        raise TransferError(f"SavedModel {path} has neither {DEFAULT_SIGNATURE!r} nor {HUB_SIGNATURE!r}; "
                            f"choose --signature from: {', '.join(usable)}")
    if wanted not in usable:
        raise TransferError(f"unknown signature {wanted!r} in {path}; available: {', '.join(usable)}")
    return wanted


def _load_signatures(path: Path, tags: list[str]):
    """The TF2 loader first; the TF1 loader when the TF2 one rejects the object graph.

    Older writers (Keras with optimizer slot variables, for one) leave object graphs that
    `tf.saved_model.load` cannot revive, while the MetaGraph's signatures and variables are fine.
    """
    try:
        loaded = tf.saved_model.load(str(path), tags=tags)
    except Exception as first_error:  # noqa: BLE001 - any reviving failure sends us to the v1 loader
        try:
            loader = _compat.v1_saved_model_loader(str(path))
            read_restored_variables(loader.get_meta_graph_def_from_tags(tags))  # edited in place
            loaded = loader.load(tags=tags)
        except Exception as error:  # noqa: BLE001
            raise TransferError(
                f"SavedModel {path} does not load: {_first_line(first_error)}; "
                f"TF1 loader: {_first_line(error)}") from None
    return loaded


def read_restored_variables(meta_graph) -> None:
    """Keras 3 saves each variable twice: the layers' functions read one handle (`note/bias`), the
    checkpoint restores another (`Variable_3`) whose TF1 initializer copies the first. The TF2
    loader makes them one object; the TF1 loader restores only the second, so point every reader
    of the first at the second (found by that initializer: `V/Assign(V, V/Initializer/Read(H))`,
    where the saver restores V and not H)."""
    graph_def = meta_graph.graph_def
    nodes = {node.name: node for node in graph_def.node}
    restored = {name.lstrip("^").split(":")[0] for name in nodes[meta_graph.saver_def.restore_op_name].input} \
        if meta_graph.saver_def.restore_op_name in nodes else set()
    aliases = {}
    for node in graph_def.node:
        if node.op != "AssignVariableOp" or node.name != f"{node.input[0]}/Assign":
            continue
        initial = nodes.get(node.input[1].split(":")[0])
        if initial is not None and initial.name == f"{node.input[0]}/Initializer/ReadVariableOp":
            source = initial.input[0].split(":")[0]
            if (nodes.get(source) is not None and nodes[source].op == "VarHandleOp" and source not in restored
                    and node.input[0] in restored):
                aliases[source] = node.input[0]
    for node in graph_def.node:
        if node.name.endswith("/Initializer/ReadVariableOp"):
            continue
        for index, name in enumerate(node.input):
            base = name.split(":")[0]
            if base in aliases:
                node.input[index] = name.replace(base, aliases[base], 1)


# -- Keras model files -----------------------------------------------------------------------


def _load_keras_file(path: Path) -> LoadedGraph:
    import keras

    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # noqa: BLE001 - Keras raises many types for a bad file
        raise TransferError(f"{path} does not load as a Keras model: {_first_line(error)}") from None
    try:
        frozen: FrozenGraph = freeze_keras_model(model)
    except ValueError:  # a layer name TensorFlow refuses as a scope: Keras' long, multi-line error
        bad = next((name for name in _layer_names(model) if not _SCOPE_NAME.fullmatch(name)), None)
        if bad is None:
            raise
        raise TransferError(f"{path}: layer {bad!r} has a name TensorFlow cannot trace (valid: letters, digits "
                            f"and _ . - > /); rename the layer") from None
    return LoadedGraph(path, "Keras", frozen.graph_def, fingerprint_path(path), path.stat().st_size,
                       frozen.inputs, frozen.outputs)
