"""Text from files, made safe to show: `printable`.

Names in a graph or SavedModel, class labels (image-folder names), cache manifests and the
TensorFlow errors that quote them are the file author's text. Printed raw, an escape sequence in
one clears or colours the user's terminal, a newline forges a line of output, a bidi override
reorders what the user reads. Every such string goes through `printable` before it leaves the
program (errors, warnings, tables, plot labels); `--json` output is escaped by `json.dumps`.
No TensorFlow here: `--help` and the CLI's errors import this module.
"""
from __future__ import annotations

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]  # C0, DEL, C1
_BIDI = [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]  # embeddings, overrides, isolates
_LINE_BREAKS = [0x2028, 0x2029]  # Unicode's line and paragraph separators
_SURROGATES = range(0xD800, 0xE000)  # undecodable bytes of a file name (surrogateescape)

_ESCAPES = {
    **{code: _NAMED.get(chr(code), f"\\x{code:02x}") for code in _CONTROLS},
    **{code: f"\\u{code:04x}" for code in (*_BIDI, *_LINE_BREAKS, *_SURROGATES)},
}


def printable(text) -> str:
    """`str(text)` with control characters (C0 including newline, tab and ESC, DEL, C1), Unicode
    bidi embeddings/overrides/isolates, line/paragraph separators and lone surrogates written as
    Python writes them in a repr (`\\x1b`, `\\n`, `\\u202e`); everything else, accented or
    non-Latin names included, is left as it is. Escaping twice changes nothing more."""
    return str(text).translate(_ESCAPES)
