"""docs/architecture.md against the code: the import rule between layers, and that each table of
its ownership table is written by its store module only. No services needed."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("schemas", "vdip", "gateway", "streams", "sinks")
TOP = {"vdip.cli", "vdip.stack", "vdip.supervisor"}
SERVICES = ("gateway", "streams", "sinks")
# What gateway and sinks may import of streams: its pure routing and condition code (the rules
# API, replays).
PURE_STREAMS = {"streams.conditions", "streams.routing"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every project module ``path`` imports, anywhere in it (``from a import b`` is ``a.b`` when
    ``b`` is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: a relative import (the code base has none; teach this test)"
            base = node.module or ""
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if _is_module(f"{base}.{alias.name}")}
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def layer(module: str) -> str:
    if module in TOP or any(module.startswith(t + ".") for t in TOP):
        return "top"
    root = module.split(".")[0]
    return {"schemas": "schemas", "vdip": "base"}.get(root, "services")


def allowed(importer: str, target: str) -> bool:
    """The rule of docs/architecture.md, "Layers"."""
    mine, theirs = layer(importer), layer(target)
    if mine == "top":
        return True
    if theirs == "schemas":
        return True
    if mine == "schemas":
        return False
    if theirs == "base":
        return True
    if mine == "base":
        return False
    # services: their own package, and the pure part of streams
    own = importer.split(".")[0] == target.split(".")[0]
    return own or target in PURE_STREAMS


def test_the_rule_reads_the_layers_as_documented() -> None:
    """The checker itself: it must be able to refuse."""
    assert not allowed("vdip.store.events", "gateway.conflicts")
    assert not allowed("vdip.topics", "vdip.cli")
    assert not allowed("vdip.statistics", "streams.fold")
    assert not allowed("schemas.events", "vdip.settings")
    assert not allowed("sinks.tables", "streams.router")
    assert not allowed("gateway.routes.rules", "streams.app")
    assert not allowed("streams.router", "vdip.supervisor")
    assert allowed("vdip.cli", "gateway.main") and allowed("vdip.logs", "schemas")
    assert allowed("gateway.routes.rules", "streams.routing") and allowed("sinks.tables", "vdip.store.tables")
    cli = imported(ROOT / "vdip" / "cli.py")
    assert cli >= {"gateway.main", "vdip.supervisor", "vdip.store.applications"}


def test_every_import_follows_the_layers() -> None:
    wrong = [
        f"{module_name(path)} imports {target}"
        for path in sources(*PACKAGES)
        for target in sorted(imported(path))
        if not allowed(module_name(path), target)
    ]
    assert wrong == []


def test_no_base_module_imports_the_services_or_the_top() -> None:
    """The brief form of the rule, spelled out: the base never imports gateway, streams, sinks,
    vdip.cli, vdip.stack or vdip.supervisor."""
    forbidden = re.compile(r"^(gateway|streams|sinks|vdip\.cli|vdip\.stack|vdip\.supervisor)(\.|$)")
    base = [p for p in sources("vdip") if layer(module_name(p)) == "base"]
    names = {module_name(p) for p in base}
    assert {"vdip.db", "vdip.topics", "vdip.store.events", "vdip.statistics"} <= names
    wrong = [f"{module_name(p)} imports {t}" for p in base for t in sorted(imported(p)) if forbidden.match(t)]
    assert wrong == []


# ------------------------------------------------------------------------------ table ownership


def owners() -> dict[str, str]:
    """The rows of the doc's "Who owns each table": table -> the file that alone writes it."""
    section = DOC.read_text().split("## Who owns each table", 1)[1].split("\n## ", 1)[0]
    found = {}
    for line in section.splitlines():
        match = re.match(r"\|\s*`(\w+)`\s*\|\s*`([\w/.]+\.py)`\s*\|", line)
        if match:
            found[match[1]] = match[2]
    return found


# SQL writes a table: INSERT INTO t, UPDATE t, DELETE FROM t, TRUNCATE t, COPY t, and asyncpg's
# copy_*_to_table("t"). Keywords are upper case in this code base (prose never matches).
WRITES = re.compile(
    r"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|TRUNCATE(?:\s+TABLE)?|COPY)\s+(?:ONLY\s+)?\"?(\w+)"
    r"|copy_(?:records_)?to_table\(\s*[\"'](\w+)"
)


def writes(text: str) -> set[str]:
    return {a or b for a, b in WRITES.findall(text)}


def test_the_ownership_table_is_read() -> None:
    found = owners()
    assert found["data_events"] == "vdip/store/events.py"
    assert found["schema_migrations"] == "vdip/db.py"
    assert len(found) >= 10
    assert all((ROOT / path).is_file() for path in found.values())
    assert writes('x = """UPDATE deliveries d SET""" + "INSERT INTO event_statistics AS s"') == {
        "deliveries",
        "event_statistics",
    }
    assert writes('await conn.copy_records_to_table("data_events", records=rows)') == {"data_events"}
    assert writes("the sink will update deliveries") == set()


@pytest.mark.parametrize("table", sorted(owners()))
def test_a_table_is_written_by_its_store_module_only(table: str) -> None:
    """Staging tables (temporary, the sink's own) are not in the ownership table; tests and bench
    set up their cases as they need."""
    owner = owners()[table]
    writers = sorted(
        str(path.relative_to(ROOT)) for path in sources(*PACKAGES) if table in writes(path.read_text())
    )
    assert writers == [owner]
