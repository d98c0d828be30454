"""Offline check of terraform/ against the Google provider's own schema.

`terraform validate` needs the provider binary, which cannot be downloaded everywhere the checks
run. The CDKTF bindings (npm `@cdktf/provider-google` and `@cdktf/provider-google-beta`) are
generated from the provider schemas, and their `.jsii` assembly names every resource, data
source, nested block and argument, with the required ones marked. tools/tfschema/package.json
pins one package per provider version (installed by scripts/setup.sh, pinned by its
package-lock.json): the newest provider and the floors of the `versions.tf` files.

Every `resource` and `data` block of terraform/**/*.tf is parsed with python-hcl2's grammar and
checked against each schema that applies to it (google or google-beta, by its `provider`
argument; the floor of the module's versions.tf and the newest): an argument or block the schema
lacks, a required one missing, a block written as an argument (`x = {...}`) and an argument
written as a block. `python -m tools.tfcheck` prints the findings and exits 1 when there is one.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hcl2.parser import LARK_GRAMMAR, Hcl2
from lark import Lark, Token, Tree

ROOT = Path(__file__).resolve().parents[1]
TERRAFORM = ROOT / "terraform"
SCHEMAS = ROOT / "tools" / "tfschema"
CACHE = SCHEMAS / "node_modules" / ".tfcheck-cache"

PROVIDERS = ("google", "google-beta")
META_ARGUMENTS = {"count", "for_each", "provider", "depends_on"}
META_BLOCKS = {"lifecycle", "provisioner", "connection"}

_RESOURCE_DOC = re.compile(
    r"Represents a \{@link https://registry\.terraform\.io/providers/hashicorp/(google(?:-beta)?)/"
    r"([0-9.]+)/docs/(resources|data-sources)/\w+ (google_\w+)\}"
)
_ANCHOR = re.compile(
    r"registry\.terraform\.io/providers/hashicorp/google(?:-beta)?/[0-9.]+/docs/[\w-]+/\w+#(\w+) "
)


class SchemaError(Exception):
    """A schema package is missing or not what tools/tfschema/package.json says."""


# --------------------------------------------------------------------------------------------
# Schemas, from the .jsii assemblies
# --------------------------------------------------------------------------------------------


@dataclass
class Block:
    """One block type of a provider schema: its arguments and nested blocks, and which are required."""

    arguments: dict[str, bool] = field(default_factory=dict)  # name -> required
    blocks: dict[str, tuple[bool, Block]] = field(default_factory=dict)  # name -> (required, schema)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _struct_fqn(ref: dict[str, Any], types: dict[str, Any]) -> str | None:
    """The struct a property's type refers to (a nested block), or None for a plain argument."""
    if "fqn" in ref:
        target = types.get(ref["fqn"])
        return ref["fqn"] if target is not None and target.get("datatype") else None
    if "collection" in ref and ref["collection"]["kind"] == "array":
        return _struct_fqn(ref["collection"]["elementtype"], types)
    if "union" in ref:
        for member in ref["union"]["types"]:
            found = _struct_fqn(member, types)
            if found:
                return found
    return None


def _block(fqn: str, types: dict[str, Any], memo: dict[str, Block]) -> Block:
    if fqn in memo:
        return memo[fqn]
    block = memo[fqn] = Block()
    for prop in types[fqn].get("properties", []):
        anchor = _ANCHOR.search(prop.get("docs", {}).get("remarks", ""))
        name = anchor.group(1) if anchor else _snake(prop["name"])
        required = not prop.get("optional", False)
        nested = _struct_fqn(prop["type"], types)
        if nested is None:
            block.arguments[name] = required
        else:
            block.blocks[name] = (required, _block(nested, types, memo))
    return block


def _to_json(block: Block) -> dict[str, Any]:
    return {
        "a": block.arguments,
        "b": {name: [required, _to_json(sub)] for name, (required, sub) in block.blocks.items()},
    }


def _from_json(data: dict[str, Any]) -> Block:
    return Block(
        arguments=dict(data["a"]),
        blocks={name: (bool(req), _from_json(sub)) for name, (req, sub) in data["b"].items()},
    )


@dataclass
class Schema:
    provider: str  # google or google-beta
    version: str
    resources: dict[str, Block]
    data_sources: dict[str, Block]


def parse_assembly(path: Path) -> Schema:
    """Every resource and data source of one provider package's .jsii assembly."""
    assembly = json.loads(path.read_text())
    types: dict[str, Any] = assembly["types"]
    memo: dict[str, Block] = {}
    found: dict[str, dict[str, Block]] = {"resources": {}, "data-sources": {}}
    provider = version = ""
    for fqn, spec in types.items():
        if spec.get("kind") != "class":
            continue
        m = _RESOURCE_DOC.search(spec.get("docs", {}).get("summary", ""))
        if not m:
            continue
        provider, version = m.group(1), m.group(2)
        config = f"{fqn}Config"
        if config not in types:
            raise SchemaError(f"{path}: {fqn} has no {config}")
        found[m.group(3)][m.group(4)] = _block(config, types, memo)
    if not provider:
        raise SchemaError(f"{path}: no resources found (not a CDKTF provider assembly?)")
    return Schema(provider, version, found["resources"], found["data-sources"])


def installed_schemas(schemas_dir: Path = SCHEMAS) -> dict[tuple[str, str], Path]:
    """(provider, provider version) -> .jsii path, for every package tools/tfschema/package.json pins."""
    manifest = json.loads((schemas_dir / "package.json").read_text())
    out = {}
    for alias in manifest["dependencies"]:
        m = re.fullmatch(r"(google(?:-beta)?)-([0-9.]+)", alias)
        if not m:
            raise SchemaError(f"{schemas_dir}/package.json: name {alias!r} is not PROVIDER-VERSION")
        out[(m.group(1), m.group(2))] = schemas_dir / "node_modules" / alias / ".jsii"
    return out


def load_schema(provider: str, version: str, schemas_dir: Path = SCHEMAS) -> Schema:
    """One provider version's schema, parsed once and cached next to the packages."""
    path = installed_schemas(schemas_dir).get((provider, version))
    if path is None:
        raise SchemaError(
            f"no schema for {provider} {version}: add it to tools/tfschema/package.json "
            "(npm alias of the @cdktf/provider-* version generated from it)"
        )
    if not path.is_file():
        raise SchemaError(f"{path} is missing: run scripts/setup.sh (npm ci in tools/tfschema)")
    stat = path.stat()
    key = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}:v1".encode()).hexdigest()[:16]
    cached = schemas_dir / "node_modules" / ".tfcheck-cache" / f"{provider}-{version}-{key}.json"
    if cached.is_file():
        return _read_cached(cached, provider, version)
    schema = parse_assembly(path)
    if (schema.provider, schema.version) != (provider, version):
        raise SchemaError(f"{path} is {schema.provider} {schema.version}, not {provider} {version}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "resources": {k: _to_json(v) for k, v in schema.resources.items()},
        "data_sources": {k: _to_json(v) for k, v in schema.data_sources.items()},
    }
    cached.write_text(json.dumps(payload))
    return schema


@functools.lru_cache(maxsize=8)
def _read_cached(cached: Path, provider: str, version: str) -> Schema:
    """A cached schema, read once per process (its name holds the package's size and time: a
    changed package is another file). The schema is shared: callers only read it."""
    data = json.loads(cached.read_text())
    return Schema(
        provider,
        version,
        {k: _from_json(v) for k, v in data["resources"].items()},
        {k: _from_json(v) for k, v in data["data_sources"].items()},
    )


def newest(provider: str, schemas_dir: Path = SCHEMAS) -> str:
    versions = [v for p, v in installed_schemas(schemas_dir) if p == provider]
    if not versions:
        raise SchemaError(f"tools/tfschema/package.json pins no {provider} schema")
    return max(versions, key=lambda v: tuple(int(x) for x in v.split(".")))


# --------------------------------------------------------------------------------------------
# HCL, with python-hcl2's grammar: attributes and blocks kept apart
# --------------------------------------------------------------------------------------------


@dataclass
class Body:
    """An HCL body: its attributes (name -> source text of the expression) and its blocks."""

    attributes: dict[str, str] = field(default_factory=dict)
    blocks: list[tuple[str, list[str], Body]] = field(default_factory=list)  # (type, labels, body)
    line: int = 0


_parser = Hcl2.lark_parser
# The same grammar, with the comments handed over as the lexer meets them (they are not in the tree).
_comments: list[Token] = []


def _keep(token: Token) -> Token:
    _comments.append(token)
    return token


_comment_parser = Lark(
    grammar=LARK_GRAMMAR,
    parser="lalr",
    cache=True,  # the grammar analysis from a temporary file after the first build (as python-hcl2 does)
    lexer_callbacks={"_NEW_LINE_OR_COMMENT": _keep, "__IGNORE_1": _keep},
)
_LINE_COMMENT = re.compile(r"(#|//)[^\n]*")


def _label(token: Any) -> str:
    text = str(token.children[0]) if isinstance(token, Tree) else str(token)
    return text[1:-1] if text.startswith('"') and text.endswith('"') else text


def _body(tree: Tree[Any], text: str) -> Body:
    body = Body(line=tree.meta.line if not tree.meta.empty else 0)
    for child in tree.children:
        if not isinstance(child, Tree):
            continue
        if child.data == "attribute":
            name = _label(child.children[0])
            expression = child.children[-1]
            body.attributes[name] = text[expression.meta.start_pos : expression.meta.end_pos].strip()
        elif child.data == "block":
            parts = [c for c in child.children if not (isinstance(c, str) and c.strip() == "")]
            inner = next((c for c in parts if isinstance(c, Tree) and c.data == "body"), None)
            head = [p for p in parts if p is not inner and not (isinstance(p, str) and p.strip() in "{}")]
            sub = _body(inner, text) if inner is not None else Body()
            sub.line = child.meta.line
            body.blocks.append((_label(head[0]), [_label(h) for h in head[1:]], sub))
    return body


def parse_hcl(text: str) -> Body:
    """The top-level body of an HCL file (python-hcl2's Lark grammar, positions kept). A text parsed
    before is not parsed again (checks of copies of terraform/ that differ in one file): the caller
    gets its own copy of the remembered body."""
    return copy.deepcopy(_parsed(text))


@functools.lru_cache(maxsize=512)
def _parsed(text: str) -> Body:
    tree = _parser.parse(text + "\n")
    start = tree if tree.data == "body" else next(c for c in tree.children if isinstance(c, Tree))
    return _body(start, text + "\n")


def strip_comments(text: str) -> str:
    """`text` without its comments (`#`, `//`, `/* */`; line breaks kept), as python-hcl2's lexer
    finds them: a `#` inside a string or a heredoc is not one."""
    _comments.clear()
    _comment_parser.parse(text + "\n")
    out: list[str] = []
    last = 0
    for token in sorted({t.start_pos: t for t in _comments}.values(), key=lambda t: t.start_pos or 0):
        start, end = token.start_pos or 0, token.end_pos or 0
        out.append(text[last:start])
        value = text[start:end]
        out.append(_LINE_COMMENT.sub("", value) if token.type != "__IGNORE_1" else "\n" * value.count("\n"))
        last = end
    out.append(text[last:])
    return "".join(out)


def string_literals(text: str) -> list[str]:
    """The quoted strings (block labels included, templates whole) and heredoc bodies of an HCL
    text, in order; comments are not code, so nothing in them counts."""
    literals: list[tuple[int, str]] = []
    for tree in _parser.parse(text + "\n").iter_subtrees():
        for child in tree.children:
            if not isinstance(child, Token):
                continue
            if child.type == "STRING_LIT":
                literals.append((child.start_pos or 0, str(child)[1:-1]))
            elif tree.data in ("heredoc_template", "heredoc_template_trim"):
                body = str(child).split("\n", 1)[1].rsplit("\n", 1)[0]
                literals.append((child.start_pos or 0, body))
    return [literal for _, literal in sorted(literals)]


def tf_files(directory: Path = TERRAFORM) -> list[Path]:
    return sorted(p for p in directory.rglob("*.tf") if ".terraform" not in p.parts)


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------


def _floor(constraint: str) -> str | None:
    m = re.search(r">=\s*([0-9]+\.[0-9]+\.[0-9]+)", constraint)
    return m.group(1) if m else None


def version_floors(module_dir: Path) -> dict[str, str]:
    """Provider -> the lowest version the module's versions.tf allows (google-beta too)."""
    floors: dict[str, str] = {}
    versions = module_dir / "versions.tf"
    if not versions.is_file():
        return floors
    for block_type, _, terraform in parse_hcl(versions.read_text()).blocks:
        if block_type != "terraform":
            continue
        for sub_type, _, required in terraform.blocks:
            if sub_type != "required_providers":
                continue
            for name, expression in required.attributes.items():
                version = re.search(r'version\s*=\s*"([^"]+)"', expression)
                floor = _floor(version.group(1)) if version else None
                if floor:
                    floors[name] = floor
    return floors


def _provider_of(body: Body) -> str:
    expression = body.attributes.get("provider", "google").strip()
    return expression.split(".")[0]


def check_body(body: Body, schema: Block, where: str, top: bool = True) -> Iterator[str]:
    """Every way one resource body (or nested block) disagrees with its schema."""
    present: set[str] = set()
    for name in body.attributes:
        if top and name in META_ARGUMENTS:
            continue
        present.add(name)
        if name in schema.blocks:
            yield f"{where}: {name} is a block, written as an argument ({name} = ...): write {name} {{ ... }}"
        elif name not in schema.arguments:
            yield f"{where}: unknown argument {name}"
    for block_type, labels, sub in body.blocks:
        if top and block_type in META_BLOCKS:
            continue
        name, content, dynamic = block_type, sub, block_type == "dynamic"
        if dynamic:
            name = labels[0] if labels else "?"
            found = next((b for t, _, b in sub.blocks if t == "content"), None)
            if found is None:
                yield f"{where}: dynamic {name!r} has no content block"
                continue
            content = found
        present.add(name)
        if name in schema.blocks:
            yield from check_body(content, schema.blocks[name][1], f"{where}.{name}", top=False)
        elif name in schema.arguments:
            written = "a dynamic block" if dynamic else f"a block: write {name} = ..."
            yield f"{where}: {name} is an argument, written as {written}"
        else:
            yield f"{where}: unknown block {name}"
    required = [n for n, r in schema.arguments.items() if r] + [n for n, (r, _) in schema.blocks.items() if r]
    for name in required:
        if name not in present:
            yield f"{where}: required {name} is not set"


@dataclass
class Report:
    findings: list[str]
    checked: dict[str, int]  # "google 6.50.0" -> resource and data blocks checked against it
    names: int  # argument and block names checked (per block, once)


def _count_names(body: Body, top: bool = True) -> int:
    count = len([a for a in body.attributes if not (top and a in META_ARGUMENTS)])
    for block_type, _, sub in body.blocks:
        if top and block_type in META_BLOCKS:
            continue
        if block_type == "dynamic":
            content = next((b for t, _, b in sub.blocks if t == "content"), Body())
            count += 1 + _count_names(content, top=False)
        else:
            count += 1 + _count_names(sub, top=False)
    return count


def check(directory: Path = TERRAFORM, schemas_dir: Path = SCHEMAS) -> Report:
    """Check every resource and data block under `directory` against the floor and newest schemas."""
    findings: list[str] = []
    checked: dict[str, int] = {}
    names = 0
    cache: dict[tuple[str, str], Schema] = {}
    for path in tf_files(directory):
        floors = version_floors(path.parent)
        try:
            top = parse_hcl(path.read_text())
        except Exception as exc:  # a syntax error is a finding, with the parser's words
            findings.append(f"{path.relative_to(directory.parent)}: cannot parse: {exc}")
            continue
        for kind, labels, body in top.blocks:
            if kind not in ("resource", "data") or len(labels) != 2 or not labels[0].startswith("google_"):
                continue
            rtype, name = labels
            provider = _provider_of(body)
            if provider not in PROVIDERS:
                findings.append(
                    f"{path.relative_to(directory.parent)}:{body.line}: unknown provider {provider}"
                )
                continue
            names += _count_names(body)
            floor = floors.get(provider)
            address = f"{'data.' if kind == 'data' else ''}{rtype}.{name}"
            where_file = f"{path.relative_to(directory.parent)}:{body.line}"
            if floor is None:
                findings.append(
                    f"{where_file}: {address}: {path.parent}/versions.tf sets no floor for {provider}"
                )
            versions = sorted({v for v in (floor, newest(provider, schemas_dir)) if v})
            for version in versions:
                if (provider, version) not in cache:
                    cache[(provider, version)] = load_schema(provider, version, schemas_dir)
                schema = cache[(provider, version)]
                table = schema.data_sources if kind == "data" else schema.resources
                label = f"{provider} {version}"
                checked[label] = checked.get(label, 0) + 1
                if rtype not in table:
                    findings.append(f"{where_file}: {address}: {label} has no {kind} {rtype}")
                    continue
                findings += [
                    f"{where_file}: {finding} ({label})"
                    for finding in check_body(body, table[rtype], address)
                ]
    return Report(findings, checked, names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("directory", nargs="?", type=Path, default=TERRAFORM)
    parser.add_argument("--schemas", type=Path, default=SCHEMAS, help="folder of the pinned schema packages")
    args = parser.parse_args(argv)
    try:
        report = check(args.directory.resolve(), args.schemas.resolve())
    except SchemaError as exc:
        sys.stderr.write(f"tfcheck: {exc}\n")
        return 2
    for finding in report.findings:
        sys.stdout.write(finding + "\n")
    against = ", ".join(f"{label} ({n} blocks)" for label, n in sorted(report.checked.items()))
    sys.stdout.write(
        f"tfcheck: {len(report.findings)} finding(s); {report.names} argument and block names "
        f"checked against {against}\n"
    )
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
