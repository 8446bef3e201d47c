"""Kubernetes manifests as users have them: read, changed in place, written back.

``drain-proxy inject`` and ``drain-proxy check`` read the same inputs: files or stdin,
several YAML documents each, and ``kind: List`` as ``kubectl get -o yaml`` prints it.
A document is parsed with ``ruamel.yaml``'s round-trip loader, so a changed one is
written back with its comments and key order; one left unchanged is written back as the
very text it came as.  Errors name the file and the line.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator, MutableMapping, MutableSequence, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, StreamMark, YAMLError
from ruamel.yaml.tokens import CommentToken

STDIN = "-"
# A line that separates documents: "---" at the start of a line, alone or before a comment
# or the document's first node; "..." ends one.
_SEPARATOR = re.compile(r"^(?:---(?:[ \t].*)?|\.\.\.[ \t]*)$")


class ManifestError(Exception):
    """Input that cannot be read as Kubernetes manifests: one line, file and line first."""


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long line the user did not fold
    yaml.indent(mapping=2, sequence=4, offset=2)
    # [{containerPort: 80}] as written, not [containerPort: 80], which some parsers refuse.
    yaml.brace_single_entry_mapping_in_flow_sequence = True
    return yaml


@dataclass
class Document:
    """One YAML document of an input: its text, where it starts, and what it holds."""

    source: str  # the file name, or "<stdin>"
    line: int  # the line of the input it starts on (1-based)
    text: str  # as read, without its separator line
    data: Any  # None for an empty document
    changed: bool = False

    def objects(self) -> Iterator[CommentedMap]:
        """The Kubernetes objects in it: itself, or the items of a ``kind: List``."""
        data = self.data
        if not isinstance(data, CommentedMap):
            return
        if data.get("kind") == "List" or str(data.get("kind", "")).endswith("List"):
            for item in data.get("items") or []:
                if isinstance(item, CommentedMap):
                    yield item
        else:
            yield data

    def render(self) -> str:
        """Its text: as read when unchanged, else dumped with comments and order kept."""
        if not self.changed:
            return self.text
        out = io.StringIO()
        _yaml().dump(self.data, out)
        return out.getvalue()


def split(text: str) -> list[tuple[int, str]]:
    """The documents of a YAML stream: (the line it starts on, its text) each.  What
    follows a ``---`` on its own line (``--- {a: b}``, ``--- # note``) is the document's."""
    documents: list[tuple[int, str]] = []
    start, lines = 1, []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        bare = line.rstrip("\r\n")
        if not _SEPARATOR.match(bare):
            lines.append(line)
            continue
        if "".join(lines).strip():
            documents.append((start, "".join(lines)))
        rest = bare[3:].strip() if bare.startswith("---") else ""
        start, lines = (number, [rest + "\n"]) if rest else (number + 1, [])
    if "".join(lines).strip():
        documents.append((start, "".join(lines)))
    return documents


def parse(text: str, source: str) -> list[Document]:
    """Every document of ``text``; ``ManifestError`` naming ``source`` and the line."""
    yaml = _yaml()
    documents = []
    for start, chunk in split(text):
        try:
            data = yaml.load(chunk)
        except MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            line = start + (mark.line if mark is not None else 0)
            problem = error.problem or error.context or "invalid YAML"
            raise ManifestError(f"{source}:{line}: {problem}") from None
        except YAMLError as error:
            raise ManifestError(f"{source}:{start}: {error}") from None
        if data is not None and not isinstance(data, CommentedMap):
            raise ManifestError(f"{source}:{start}: a Kubernetes object is a mapping, "
                                f"not a {type(data).__name__}")
        documents.append(Document(source, start, chunk, data))
    return documents


def read(paths: Sequence[str], stdin: TextIO | None = None) -> list[Document]:
    """The documents of ``paths`` in order; stdin when there are none, or for ``-``."""
    documents: list[Document] = []
    for path in paths or [STDIN]:
        if path == STDIN:
            text, source = (stdin or sys.stdin).read(), "<stdin>"
        else:
            try:
                with open(path, encoding="utf-8") as file:
                    text, source = file.read(), path
            except OSError as error:
                raise ManifestError(f"{path}: cannot read: {error.strerror}") from None
            except UnicodeDecodeError:
                raise ManifestError(f"{path}: not UTF-8 text") from None
        documents.extend(parse(text, source))
    return documents


def write(documents: Sequence[Document], out: TextIO) -> None:
    """The documents as one YAML stream, each after a ``---`` line."""
    for document in documents:
        out.write("---\n")
        text = document.render()
        out.write(text if text.endswith("\n") or not text else text + "\n")


# Adding to a node read from YAML.  ruamel.yaml keeps the comment lines that follow a block
# on the last scalar of that block, so a key or item added at its end would be written
# after them, under a comment that was about what comes next.  These move those lines
# below what is added.  Plain dicts and lists (a webhook's JSON) are changed plainly.


def put(mapping: MutableMapping[str, Any], key: str, value: Any) -> None:
    """``mapping[key] = value``; a new key goes last, below the mapping's own lines."""
    if key in mapping or not isinstance(mapping, CommentedMap):
        mapping[key] = value
        return
    lines = _take_trailing_lines(mapping)
    mapping[key] = commented(value)
    _give_trailing_lines(mapping, lines)


def append(sequence: MutableSequence[Any], value: Any) -> None:
    """``sequence.append(value)``, below the sequence's own lines."""
    if not isinstance(sequence, CommentedSeq):
        sequence.append(value)
        return
    lines = _take_trailing_lines(sequence)
    sequence.append(commented(value))
    _give_trailing_lines(sequence, lines)


def block(node: Any) -> None:
    """Write a node in block style: what is added to a node written in flow style would be
    written on its one line.  A node inside a flow node stays flow, so callers go from the
    outside in."""
    if isinstance(node, (CommentedMap, CommentedSeq)):
        node.fa.set_block_style()


def commented(value: Any) -> Any:
    """Plain dicts and lists as ruamel.yaml's nodes, which can carry comments."""
    if isinstance(value, dict) and not isinstance(value, CommentedMap):
        return CommentedMap((key, commented(item)) for key, item in value.items())
    if isinstance(value, list) and not isinstance(value, CommentedSeq):
        return CommentedSeq(commented(item) for item in value)
    return value


def _last_path(node: Any) -> list[Any]:
    """The block nodes from ``node`` down to the one holding its last scalar."""
    path = []
    while isinstance(node, (CommentedMap, CommentedSeq)):
        path.append(node)
        if not len(node):
            break
        child = node[_last_key(node)]
        if not isinstance(child, (CommentedMap, CommentedSeq)) or not len(child) \
                or child.fa.flow_style():
            break
        node = child
    return path


def _last_key(node: Any) -> Any:
    return next(reversed(node)) if isinstance(node, CommentedMap) else len(node) - 1


def _last_slot(node: Any) -> tuple[list[Any], int] | None:
    """Where the comment after the last scalar of a block node is kept, if it has one."""
    path = _last_path(node)
    if not path or not len(path[-1]):
        return None
    holder = path[-1]
    slot = holder.ca.items.get(_last_key(holder))
    index = 2 if isinstance(holder, CommentedMap) else 0
    if slot is None or len(slot) <= index or slot[index] is None:
        return None
    return slot, index


def _take_trailing_lines(node: Any) -> str:
    """The whole lines of comment (and blank lines) after a block node's last line, taken off
    it; its end-of-line comment stays."""
    lines = ""
    found = _last_slot(node)
    if found is not None:
        slot, index = found
        token = slot[index]
        text: str = token.value
        end = text.find("\n")
        if end >= 0 and text[end + 1:].strip():
            token.value = text[: end + 1]
            if not token.value.strip():
                slot[index] = None
            lines = text[end + 1:]
    for holder in reversed(_last_path(node)):  # comments after a flow node's block
        ends = getattr(holder.ca, "end", None)
        if ends:
            lines += "".join(token.value for token in ends)
            holder.ca.end = []
    return lines


def _give_trailing_lines(node: Any, lines: str) -> None:
    """Put comment lines after the last scalar of a block node."""
    if not lines:
        return
    found = _last_slot(node)
    if found is not None:
        slot, index = found
        slot[index].value = slot[index].value + lines
        return
    path = _last_path(node)
    if not path or not len(path[-1]):
        return
    holder = path[-1]
    index = 2 if isinstance(holder, CommentedMap) else 0
    slot = holder.ca.items.setdefault(_last_key(holder), [None, None, None, None])
    slot[index] = CommentToken("\n" + lines, StreamMark("", 0, 0, 0), None)
