"""``drain-proxy check [--format text|json] [--kubernetes-version X.Y] [FILE ...]``.

Static analysis of Kubernetes manifests for graceful-shutdown correctness, with or without
drain-proxy in them.  The FILEs are one set of objects (a Service in one file routes to a
Deployment in another); ``-``, or no FILE, reads stdin.  A directory is refused: a
kustomization's directory holds patches and ``kustomization.yaml``, which are not objects,
so render it first (``kubectl kustomize DIR | drain-proxy check``).

Exit codes: 0 no error (warnings and infos allowed), 1 an error, 2 input that cannot be read
or a bad option (one line: the file, the line, what is wrong).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn, TextIO

from proxy.adopt.cluster import Inventory
from proxy.adopt.findings import ERROR, Finding, as_json, as_text, ordered
from proxy.adopt.manifests import Document, ManifestError, read
from proxy.adopt.pods import Obj
from proxy.adopt.rules import Options, run


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _version(text: str) -> tuple[int, int]:
    found = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?", text.strip())
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed: MAJOR.MINOR such as 1.29")
    return int(found.group(1)), int(found.group(2))


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="drain-proxy check", allow_abbrev=False,
                     description="Check Kubernetes manifests for graceful-shutdown "
                     "correctness (deploy/README.md, \"Check your manifests\", lists the ids).")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--kubernetes-version", type=_version, metavar="X.Y",
                        help="the cluster's version (native sidecars, named sidecar ports)")
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help="manifests; - or none: stdin. Render kustomizations first.")
    return parser


def objects(documents: Sequence[Document]) -> Iterator[Obj]:
    """The Kubernetes objects of the documents; an object without a kind is unreadable."""
    for document in documents:
        for obj in document.objects():
            if not isinstance(obj.get("kind"), str):
                raise ManifestError(f"{document.source}:{document.line}: not a Kubernetes "
                                    f"object: it has no kind")
            yield obj


def check(objs: Sequence[Obj], options: Options) -> list[Finding]:
    """The findings of every rule over these objects, most severe first."""
    return ordered(run(Inventory.of(objs), options))


def main(argv: Sequence[str], stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        args = _parser().parse_args(list(argv))
        found = check(list(objects(read(args.files, stdin))),
                      Options(kubernetes_version=args.kubernetes_version))
    except (_UsageError, ManifestError) as error:
        print(f"drain-proxy check: error: {error}", file=sys.stderr)
        return 2
    out.write(as_json(found) if args.format == "json" else as_text(found))
    return 1 if any(f.severity == ERROR for f in found) else 0
