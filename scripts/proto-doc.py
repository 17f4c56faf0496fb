#!/usr/bin/env python3
"""Generate docs/proto.md, the reference of veto's gRPC API, from proto/veto/v1.

The .proto files are the source of truth: every service, rpc, message, enum,
field, oneof and enum value carries a leading `//` comment (the form protoc
attaches as documentation), and this script turns them into one Markdown
reference.

Usage:
    scripts/proto-doc.py           write docs/proto.md
    scripts/proto-doc.py --check   exit 1 if an element lacks a comment or
                                   docs/proto.md differs from what would be
                                   written; else print a one-line summary

The parser is small and line-based. It understands the style these files
use: one statement per line, `//` comments on the lines directly above the
element they describe (a blank line detaches them), services with rpcs
(including streams), messages (nested too), enums, oneofs, optional,
repeated and map fields. Anything else is reported as an error rather than
skipped. Python 3 standard library only.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_DIR = PROTO_ROOT / "veto" / "v1"
OUT = ROOT / "docs" / "proto.md"

SCALARS = {
    "double", "float", "int32", "int64", "uint32", "uint64", "sint32",
    "sint64", "fixed32", "fixed64", "sfixed32", "sfixed64", "bool",
    "string", "bytes",
}

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
TYPE = r"\.?[A-Za-z_][A-Za-z0-9_.]*"
RE_RPC = re.compile(
    rf"^rpc\s+({IDENT})\s*\(\s*(stream\s+)?({TYPE})\s*\)\s*returns\s*"
    rf"\(\s*(stream\s+)?({TYPE})\s*\)\s*(;|\{{\s*\}}\s*;?|\{{)$"
)
RE_BLOCK = re.compile(rf"^(service|message|enum|oneof)\s+({IDENT})\s*\{{\s*(\}})?$")
RE_FIELD = re.compile(
    rf"^(?:(optional|repeated)\s+)?"
    rf"(map\s*<\s*({IDENT})\s*,\s*({TYPE})\s*>|{TYPE})\s+({IDENT})\s*=\s*(\d+)"
    rf"\s*(?:\[[^\]]*\])?\s*;$"
)
RE_VALUE = re.compile(rf"^({IDENT})\s*=\s*(-?\d+)\s*(?:\[[^\]]*\])?\s*;$")
RE_TOPLEVEL = re.compile(r"^(syntax|package|import|option|edition)\b(.*);$")
RE_SKIP = re.compile(r"^(option|reserved|extensions)\b.*;$")


class ParseError(Exception):
    pass


@dataclass
class Element:
    """Anything that can carry a leading comment."""

    kind: str
    name: str
    path: str  # file path relative to proto/
    line: int
    comment: list[str]
    owner: str = ""  # enclosing message, enum or service, for messages


@dataclass
class Field(Element):
    number: int = 0
    type: str = ""
    label: str = ""  # "", "optional", "repeated", "map"
    oneof: str = ""
    map_key: str = ""
    map_value: str = ""


@dataclass
class EnumValue(Element):
    number: int = 0


@dataclass
class Oneof(Element):
    fields: list[str] = field(default_factory=list)


@dataclass
class Rpc(Element):
    request: str = ""
    response: str = ""
    client_stream: bool = False
    server_stream: bool = False


@dataclass
class Service(Element):
    rpcs: list[Rpc] = field(default_factory=list)


@dataclass
class Enum(Element):
    full: str = ""  # qualified within the package, e.g. Outer.Inner
    values: list[EnumValue] = field(default_factory=list)


@dataclass
class Message(Element):
    full: str = ""
    fields: list[Field] = field(default_factory=list)
    oneofs: list[Oneof] = field(default_factory=list)


@dataclass
class ProtoFile:
    path: str
    package: str = ""
    imports: list[str] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)  # nested included
    enums: list[Enum] = field(default_factory=list)  # nested included

    def elements(self) -> list[Element]:
        out: list[Element] = []
        for s in self.services:
            out.append(s)
            out.extend(s.rpcs)
        for m in self.messages:
            out.append(m)
            out.extend(m.oneofs)
            out.extend(m.fields)
        for e in self.enums:
            out.append(e)
            out.extend(e.values)
        return sorted(out, key=lambda e: e.line)


def parse(path: Path) -> ProtoFile:
    rel = path.relative_to(PROTO_ROOT).as_posix()
    pf = ProtoFile(rel)
    pending: list[str] = []
    stack: list[Element] = []  # open blocks

    def fail(n: int, why: str) -> None:
        raise ParseError(f"{rel}:{n}: {why}")

    def take() -> list[str]:
        nonlocal pending
        c, pending = pending, []
        return c

    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line:
            pending = []  # a blank line detaches the comment above it
            continue
        if line.startswith("//"):
            text = line[2:]
            pending.append(text[1:] if text.startswith(" ") else text)
            continue
        if "/*" in line:
            fail(n, "block comments are not supported; use //")
        if "//" in line:  # trailing comment: not documentation here
            line = line[: line.index("//")].rstrip()
        top = stack[-1] if stack else None

        if line == "}":
            if not stack:
                fail(n, "unbalanced }")
            stack.pop()
            pending = []
            continue

        m = RE_BLOCK.match(line)
        if m:
            kind, name, closed = m.group(1), m.group(2), m.group(3)
            comment = take()
            if kind == "service":
                if top is not None:
                    fail(n, "service inside a block")
                el: Element = Service("service", name, rel, n, comment)
                pf.services.append(el)
            elif kind in ("message", "enum"):
                if top is not None and not isinstance(top, Message):
                    fail(n, f"{kind} inside a {top.kind}")
                full = f"{top.full}.{name}" if isinstance(top, Message) else name
                if kind == "message":
                    el = Message("message", name, rel, n, comment, full=full)
                    pf.messages.append(el)
                else:
                    el = Enum("enum", name, rel, n, comment, full=full)
                    pf.enums.append(el)
            else:  # oneof
                if not isinstance(top, Message):
                    fail(n, "oneof outside a message")
                el = Oneof("oneof", name, rel, n, comment, owner=top.full)
                top.oneofs.append(el)
            if not closed:
                stack.append(el)
            continue

        if top is None:
            m = RE_TOPLEVEL.match(line)
            if not m:
                fail(n, f"cannot parse: {line}")
            key, rest = m.group(1), m.group(2).strip()
            if key == "package":
                pf.package = rest
            elif key == "import":
                pf.imports.append(rest.split()[-1].strip('"'))
            pending = []
            continue

        if isinstance(top, Service):
            m = RE_RPC.match(line)
            if m:
                rpc = Rpc(
                    "rpc", m.group(1), rel, n, take(), top.name,
                    request=m.group(3), response=m.group(5),
                    client_stream=bool(m.group(2)), server_stream=bool(m.group(4)),
                )
                top.rpcs.append(rpc)
                if m.group(6) == "{":
                    stack.append(rpc)
                continue
            if RE_SKIP.match(line):
                pending = []
                continue
            fail(n, f"cannot parse in service {top.name}: {line}")

        if isinstance(top, Rpc):  # options body of an rpc
            if RE_SKIP.match(line):
                pending = []
                continue
            fail(n, f"cannot parse in rpc {top.name}: {line}")

        if isinstance(top, Enum):
            m = RE_VALUE.match(line)
            if m:
                top.values.append(
                    EnumValue(
                        "enum value", m.group(1), rel, n, take(), top.full,
                        number=int(m.group(2)),
                    )
                )
                continue
            if RE_SKIP.match(line):
                pending = []
                continue
            fail(n, f"cannot parse in enum {top.name}: {line}")

        # message or oneof
        m = RE_FIELD.match(line)
        if m:
            label, typ, mk, mv, name, num = m.groups()
            msg = top if isinstance(top, Message) else stack[-2]
            assert isinstance(msg, Message)
            f = Field("field", name, rel, n, take(), msg.full, number=int(num))
            if mk:
                if label:
                    fail(n, "a map field takes no label")
                f.label, f.type, f.map_key, f.map_value = "map", f"map<{mk}, {mv}>", mk, mv
            else:
                f.label, f.type = label or "", typ
            if isinstance(top, Oneof):
                if label:
                    fail(n, "a oneof member takes no label")
                f.oneof = top.name
                top.fields.append(name)
            msg.fields.append(f)
            continue
        if RE_SKIP.match(line):
            pending = []
            continue
        fail(n, f"cannot parse in {top.kind} {top.name}: {line}")

    if stack:
        raise ParseError(f"{rel}: unclosed {stack[-1].kind} {stack[-1].name}")
    return pf


# ---- rendering ----------------------------------------------------------


def escape_text(s: str) -> str:
    """Escapes `<` and `|` outside code spans so tables and text render."""
    parts = s.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;")
    return "`".join(parts).replace("|", "\\|")


def paragraphs(comment: list[str]) -> list[str]:
    """Comment lines as paragraphs; an empty `//` line separates them."""
    out: list[str] = []
    cur: list[str] = []
    for line in comment + [""]:
        if line.strip():
            cur.append(line.strip())
        elif cur:
            out.append(escape_text(" ".join(cur)))
            cur = []
    return out


def cell(comment: list[str]) -> str:
    return "<br><br>".join(paragraphs(comment))


def anchor(package: str, full: str) -> str:
    return f"{package}.{full}".replace(".", "-").lower()


def file_anchor(path: str) -> str:
    return "file-" + re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")


class Resolver:
    """Finds the message or enum a type name refers to, protobuf-style."""

    def __init__(self, files: list[ProtoFile]):
        self.known: dict[str, str] = {}  # qualified name -> anchor
        for pf in files:
            for t in [*pf.messages, *pf.enums]:
                self.known[f"{pf.package}.{t.full}"] = anchor(pf.package, t.full)

    def link(self, typ: str, package: str, scope: str) -> str:
        if typ in SCALARS:
            return f"`{typ}`"
        if typ.startswith("."):
            candidates = [typ[1:]]
        else:
            parts = scope.split(".") if scope else []
            candidates = [
                ".".join([package, *parts[:i], typ]) for i in range(len(parts), -1, -1)
            ]
            candidates.append(typ)
        for c in candidates:
            if c in self.known:
                return f"[`{typ}`](#{self.known[c]})"
        return f"`{typ}`"


def render(files: list[ProtoFile]) -> str:
    res = Resolver(files)
    out: list[str] = []
    w = out.append
    w("# veto gRPC API reference")
    w("")
    w(
        "This file is generated by `scripts/proto-doc.py` from the comments in "
        "`proto/veto/v1/*.proto`; do not edit it by hand. Change the `.proto` "
        "comments and run `scripts/proto-doc.py` to regenerate it; "
        "`scripts/proto-doc.py --check` fails when an element lacks a comment "
        "or this file is out of date."
    )
    w("")
    w("## Files")
    w("")
    for pf in files:
        w(f"- [`{pf.path}`](#{file_anchor(pf.path)})")
    w("")
    for pf in files:
        pkg = pf.package
        w(f'<a id="{file_anchor(pf.path)}"></a>')
        w("")
        w(f"## {pf.path}")
        w("")
        line = f"Package `{pkg}`."
        if pf.imports:
            line += " Imports " + ", ".join(f"`{i}`" for i in pf.imports) + "."
        w(line)
        w("")
        if pf.services:
            w("### Services")
            w("")
        for s in pf.services:
            w(f'<a id="{anchor(pkg, s.name)}"></a>')
            w("")
            w(f"#### {s.name}")
            w("")
            for p in paragraphs(s.comment):
                w(p)
                w("")
            w("| RPC | Request -> Response | Description |")
            w("| --- | --- | --- |")
            for r in s.rpcs:
                req = ("stream " if r.client_stream else "") + res.link(r.request, pkg, "")
                resp = ("stream " if r.server_stream else "") + res.link(r.response, pkg, "")
                w(f"| `{r.name}` | {req} -> {resp} | {cell(r.comment)} |")
            w("")
        if pf.messages:
            w("### Messages")
            w("")
        for m in pf.messages:
            w(f'<a id="{anchor(pkg, m.full)}"></a>')
            w("")
            w(f"#### {m.full}")
            w("")
            for p in paragraphs(m.comment):
                w(p)
                w("")
            if not m.fields:
                w("No fields.")
                w("")
                continue
            w("| Field | Number | Type | Label | Description |")
            w("| --- | --- | --- | --- | --- |")
            for f in m.fields:
                if f.label == "map":
                    typ = (
                        f"map&lt;{res.link(f.map_key, pkg, m.full)}, "
                        f"{res.link(f.map_value, pkg, m.full)}&gt;"
                    )
                else:
                    typ = res.link(f.type, pkg, m.full)
                label = f"oneof `{f.oneof}`" if f.oneof else (f.label or "singular")
                w(f"| `{f.name}` | {f.number} | {typ} | {label} | {cell(f.comment)} |")
            w("")
            for o in m.oneofs:
                members = ", ".join(f"`{x}`" for x in o.fields)
                w(f"Oneof `{o.name}` ({members}): {' '.join(paragraphs(o.comment))}")
                w("")
        if pf.enums:
            w("### Enums")
            w("")
        for e in pf.enums:
            w(f'<a id="{anchor(pkg, e.full)}"></a>')
            w("")
            w(f"#### {e.full}")
            w("")
            for p in paragraphs(e.comment):
                w(p)
                w("")
            w("| Value | Number | Description |")
            w("| --- | --- | --- |")
            for v in e.values:
                w(f"| `{v.name}` | {v.number} | {cell(v.comment)} |")
            w("")
    return "\n".join(out).rstrip("\n") + "\n"


def uncommented(files: list[ProtoFile]) -> list[str]:
    out = []
    for pf in files:
        for e in pf.elements():
            if not any(line.strip() for line in e.comment):
                name = getattr(e, "full", "") or (f"{e.owner}.{e.name}" if e.owner else e.name)
                out.append(f"proto/{e.path}:{e.line}: {e.kind} {name} has no leading // comment")
    return out


def summary(files: list[ProtoFile]) -> str:
    count = lambda f: sum(f(pf) for pf in files)  # noqa: E731
    return (
        f"{len(files)} files: "
        f"{count(lambda p: len(p.services))} services, "
        f"{count(lambda p: sum(len(s.rpcs) for s in p.services))} rpcs, "
        f"{count(lambda p: len(p.messages))} messages, "
        f"{count(lambda p: sum(len(m.fields) for m in p.messages))} fields, "
        f"{count(lambda p: sum(len(m.oneofs) for m in p.messages))} oneofs, "
        f"{count(lambda p: len(p.enums))} enums, "
        f"{count(lambda p: sum(len(e.values) for e in p.enums))} enum values"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if a comment is missing or docs/proto.md is stale",
    )
    args = ap.parse_args()
    paths = sorted(PROTO_DIR.glob("*.proto"))
    if not paths:
        print(f"proto-doc: no .proto files in {PROTO_DIR}", file=sys.stderr)
        return 1
    try:
        files = [parse(p) for p in paths]
    except ParseError as e:
        print(f"proto-doc: {e}", file=sys.stderr)
        return 1
    missing = uncommented(files)
    text = render(files)
    rel_out = OUT.relative_to(ROOT).as_posix()
    if args.check:
        ok = True
        if missing:
            ok = False
            print(f"proto-doc: {len(missing)} element(s) lack a comment:", file=sys.stderr)
            for m in missing:
                print(f"  {m}", file=sys.stderr)
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else None
        if current != text:
            ok = False
            why = "is missing" if current is None else "is out of date"
            print(
                f"proto-doc: {rel_out} {why}; run scripts/proto-doc.py",
                file=sys.stderr,
            )
        if not ok:
            return 1
        print(f"proto-doc: ok: {summary(files)}, all commented; {rel_out} is up to date")
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(f"proto-doc: wrote {rel_out} ({summary(files)})")
    if missing:
        print(f"proto-doc: {len(missing)} element(s) lack a comment:", file=sys.stderr)
        for m in missing:
            print(f"  {m}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
