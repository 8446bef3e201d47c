"""``drain-proxy inject``: manifests in, the same manifests with the proxy wired in, out.

It reads files or stdin and writes stdout, so it also serves as a Helm post-renderer
(``helm install --post-renderer drain-proxy --post-renderer-args inject``).  Every step
``deploy/README.md`` once asked of users by hand is done here, where it can be checked:
the Service retargeted, the app's ``preStop`` merged into its ``lifecycle``, the upstream
port and the grace period told to the proxy, one drain token in the Secret and the hook.
Its own output goes through unchanged, so it can run on every render.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import secrets
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, TextIO

from proxy.adopt import sidecar
from proxy.adopt.manifests import Document, ManifestError, put, read, write
from proxy.adopt.targets import Choices, Node, Target, find_targets, name_of
from proxy.adopt.wiring import Options, WiringError, find_proxy, wire_pod
from proxy.settings import PLACEHOLDER_TOKEN_PREFIX

PROG = "drain-proxy inject"


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ManifestError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=PROG, allow_abbrev=False,
        description="Wire drain-proxy into the workloads of Kubernetes manifests: every "
        "Deployment, StatefulSet, DaemonSet, ReplicaSet or Pod that a Service of the input "
        "selects, or that is annotated drain-proxy/inject: enabled. Reads the files (stdin "
        "when none, or for -), writes the result to stdout.")
    parser.add_argument("files", nargs="*", metavar="FILE")
    parser.add_argument("--layout", choices=("native", "classic"), default="native",
                        help="native: the proxy in initContainers with restartPolicy: Always "
                        "(Kubernetes >= 1.29, the default); classic: a second container")
    parser.add_argument("--image", help=f"the proxy's image, also for a proxy already there "
                        f"(default for a new one: {sidecar.DEFAULT_IMAGE}, a placeholder)")
    parser.add_argument("--app-container", metavar="NAME",
                        help="the container the proxy fronts, when a pod has several")
    parser.add_argument("--app-port", metavar="PORT",
                        help="the app's port (number or name), when it cannot be told")
    parser.add_argument("--mode", choices=("http", "tcp"),
                        help="the proxy's mode, when a port does not look like HTTP")
    parser.add_argument("--drain-token", metavar="TOKEN",
                        help="the drain token (default: the Secret drain-proxy-drain-token "
                        "of the input, else the token the pods already send, else a new one, "
                        "written as that Secret)")
    return parser


def main(argv: Sequence[str], stdin: TextIO | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    err = stderr or sys.stderr
    try:
        args = build_parser().parse_args(list(argv))
        documents = read(args.files, stdin)
    except ManifestError as error:
        print(f"{PROG}: error: {error}", file=err)
        return 2
    choices = Choices(args.app_container, args.app_port, args.mode)
    problems = inject(documents, choices, args.layout == "native", args.image,
                      args.drain_token, lambda line: print(f"{PROG}: {line}", file=err))
    if problems:
        for problem in problems:
            print(f"{PROG}: error: {problem}", file=err)
        return 2
    write(documents, stdout or sys.stdout)
    return 0


def inject(documents: list[Document], choices: Choices, native: bool, image: str | None,
           token: str | None, say: Callable[[str], None]) -> list[str]:
    """Wire the documents in place (a new Secret appended when a token had to be made);
    the problems that stop the run, nothing changed, when there are any."""
    objects: list[Node] = [obj for document in documents for obj in document.objects()]
    where = {id(obj): _where(document, obj) for document in documents
             for obj in document.objects()}

    def about(obj: Node, what: str) -> str:
        return f"{where[id(obj)]}: {name_of(obj)}: {what}"

    def tell(obj: Node) -> Callable[[str], None]:
        return lambda line: say(about(obj, line))

    targets, undecided = find_targets(objects, choices)
    if undecided:
        return [about(workload, what) for workload, what in undecided]
    before = [_snapshot(document) for document in documents]
    if token is None:
        token = _token_in(objects, targets)
    made = token is None
    options = Options(native, image, token or secrets.token_hex(32), choices.mode)
    for secret in _token_secrets(objects):
        _set_token(secret, options.token)
    problems = []
    for target in targets:
        fresh = find_proxy(target.spec) is None
        try:
            _wire(target, options, tell(target.workload))
        except WiringError as error:
            problems.append(about(target.workload, str(error)))
        for service in target.headless if fresh else []:
            say(about(service, f"headless: its clients reach {name_of(target.workload)} at the "
                      f"pods' addresses, through the proxy only on port {sidecar.PROXY_PORT}"))
    if problems:
        return problems
    for document, snapshot in zip(documents, before, strict=True):
        document.changed = document.changed or _snapshot(document) != snapshot
    _add_secrets(documents, objects, targets, options.token)
    if targets and options.token.upper().startswith(PLACEHOLDER_TOKEN_PREFIX):
        say(f"the drain token is deploy/'s placeholder ({options.token}), with which the proxy "
            f"refuses to start: pass one of your own with --drain-token")
    if made and targets:
        say(f"made a new drain token, in the Secret {sidecar.TOKEN_SECRET} it writes: pass "
            f"it with --drain-token, or keep that Secret in your input, or every run makes "
            f"another (and a rollout)")
    return []


def _where(document: Document, obj: Node) -> str:
    """The file and line an object starts on (its first key's; a List's item: its own)."""
    line = getattr(getattr(obj, "lc", None), "line", None)
    return f"{document.source}:{document.line + (line if isinstance(line, int) else 0)}"


def _wire(target: Target, options: Options, say: Callable[[str], None]) -> None:
    own = Options(options.native, options.image, options.token, target.mode)
    wire_pod(target.metadata, target.spec, target.app, own, say)
    for service_port in target.service_ports:
        if service_port.get("targetPort") != sidecar.PROXY_PORT:
            put(service_port, "targetPort", sidecar.PROXY_PORT)


def _token_secrets(objects: Sequence[Node]) -> list[Node]:
    return [obj for obj in objects if obj.get("kind") == "Secret"
            and (obj.get("metadata") or {}).get("name") == sidecar.TOKEN_SECRET]


def _secret_token(secret: Node) -> str | None:
    """The token of a Secret: ``stringData`` over ``data``, as the API server reads it."""
    value = (secret.get("stringData") or {}).get(sidecar.TOKEN_KEY)
    if value is not None:
        return str(value).strip()
    encoded = (secret.get("data") or {}).get(sidecar.TOKEN_KEY)
    try:
        return None if encoded is None else base64.b64decode(str(encoded)).decode().strip()
    except (binascii.Error, UnicodeDecodeError):
        return None


def _set_token(secret: Node, token: str) -> None:
    """The Secret holds the token the hooks send: two tokens are a drain refused with 401."""
    if _secret_token(secret) == token:
        return
    data = secret.get("data") or {}
    data.pop(sidecar.TOKEN_KEY, None)
    if secret.get("stringData") is None:
        put(secret, "stringData", {})
    put(secret["stringData"], sidecar.TOKEN_KEY, token)


def _token_in(objects: Sequence[Node], targets: list[Target]) -> str | None:
    """The drain token the input already holds: its Secret's, else the one the pods send."""
    for secret in _token_secrets(objects):
        value = _secret_token(secret)
        if value:
            return value
    for target in targets:
        for container in target.spec.get("containers") or []:
            hook = ((container.get("lifecycle") or {}).get("preStop") or {}).get("httpGet")
            for header in (hook or {}).get("httpHeaders") or []:
                value = str(header.get("value", ""))
                if header.get("name") == "Authorization" and value.startswith("Bearer "):
                    return value.removeprefix("Bearer ")
    return None


def _add_secrets(documents: list[Document], objects: Sequence[Node], targets: list[Target],
                 token: str) -> None:
    """The token Secret, in each namespace of a wired workload whose input has none: the
    proxy reads the token from it, and the hooks send the same one."""
    have = {_namespace(secret) for secret in _token_secrets(objects)}
    for target in targets:
        namespace = _namespace(target.workload)
        if namespace not in have:
            have.add(namespace)
            documents.append(Document("<inject>", 0, "", sidecar.secret(token, namespace),
                                      changed=True))


def _namespace(obj: Node) -> str | None:
    namespace = (obj.get("metadata") or {}).get("namespace")
    return None if namespace is None else str(namespace)


def _snapshot(document: Document) -> str:
    return json.dumps(document.data, default=str)
