"""The store's SQL speaks the statuses of ``schemas`` and the migrations' constraints, and the
base modules stay below the processes that use them. No database needed."""

import ast
import re
from pathlib import Path

import pytest

from schemas import DeliveryStatus, EventStatus
from schemas.jobs import JobState
from vdip.store import locks

ROOT = Path(__file__).resolve().parents[2]
STORE = ROOT / "vdip" / "store"

# The quoted words each store module's SQL may use besides the statuses of its table.
DESTINATION_TYPES = {"queue", "webhook", "database_table"}
ALLOWED = {
    "deliveries.py": {*DeliveryStatus, *DESTINATION_TYPES, "deliveries", "max_in_flight", "max_per_second"},
    "rules.py": {*DeliveryStatus, "webhook"},
    "events.py": {*EventStatus, "error"},  # the key of a routing summary's error
    "statistics.py": set(EventStatus),
    "applications.py": set(),
    "jobs.py": set(JobState),
}


def sql_literals(module: Path) -> set[str]:
    """The single-quoted literals in a module's strings, docstrings left out."""
    tree = ast.parse(module.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found |= set(re.findall(r"'([^']*)'", node.value))
    return found


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_the_store_sql_quotes_only_statuses_and_known_words(name: str) -> None:
    assert sql_literals(STORE / name) - ALLOWED[name] == set()


def test_a_misspelt_status_would_be_caught(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('"""Doc: it\'s fine."""\nSQL = "UPDATE deliveries SET status = \'deliverd\'"\n')
    assert sql_literals(module) - ALLOWED["deliveries.py"] == {"deliverd"}


def check_constraint(sql: str, table: str) -> set[str]:
    """The values of ``status text ... CHECK (status IN (...))`` in ``CREATE TABLE table``."""
    body = re.search(rf"CREATE TABLE {table} \((.*?)\n\);", sql, re.S)
    assert body is not None, table
    values = re.search(r"status\s+text NOT NULL.*?CHECK \(status IN \(([^)]*)\)\)", body.group(1), re.S)
    assert values is not None, table
    return set(re.findall(r"'([^']*)'", values.group(1)))


def test_the_enums_are_the_statuses_the_tables_accept() -> None:
    migrations = "\n".join(p.read_text() for p in sorted((ROOT / "vdip" / "migrations").glob("*.sql")))
    assert check_constraint(migrations, "deliveries") == set(DeliveryStatus)
    assert check_constraint(migrations, "data_events") == set(EventStatus)
    assert check_constraint(migrations, "event_counted") == set(EventStatus)


BASE = ["settings", "errors", "db", "logs", "metrics", "topics", "kafka"]


def imports_of(module: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_base_modules_do_not_import_the_processes_or_the_cli() -> None:
    modules = [ROOT / "vdip" / f"{name}.py" for name in BASE] + sorted(STORE.glob("*.py"))
    for module in modules:
        bad = {
            name
            for name in imports_of(module)
            if name.split(".")[0] in {"gateway", "streams", "sinks"} or name == "vdip.cli"
        }
        assert bad == set(), module


def test_each_advisory_lock_id_is_used_once() -> None:
    ids = [value for name, value in vars(locks).items() if name.isupper()]
    assert len(ids) == 4 and len(set(ids)) == len(ids)
