"""Routing conditions: a subset of MongoDB's query language, validated, then evaluated on events.

Operators: ``$eq $ne $gt $gte $lt $lte $in $nin $exists $not`` on fields, ``$and $or`` on
queries; ``{"field": value}`` means ``$eq``. Semantics follow MongoDB's:

- A dotted path walks into objects and arrays: ``items.sku`` reaches the ``sku`` of every object in
  the ``items`` array, ``items.0`` its first element.
- A field whose value is an array matches when the array itself or any element matches; with
  several operators on one field, each may be met by a different element.
- A missing field equals ``null``; ``$ne``/``$nin`` match missing fields.
- Comparisons only hold within a type: numbers with numbers, strings with strings; ``true`` is
  not ``1``. Comparing incompatible types is false, never an error.

Paths start with ``event_type``, ``app_id``, ``payload`` or ``metadata``; any other path is read
inside ``payload`` (``total`` means ``payload.total``).

Everything here is pure: ``validate`` checks a condition once, when its rule is saved;
``compile_condition`` normalises its paths; ``compile_matcher`` turns it into one function of an
event, built once per rule (closures, no interpretation per event); ``explain`` says why not.
"""

import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

ROOTS = ("event_type", "app_id", "payload", "metadata")
FIELD_OPERATORS = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$not"}
QUERY_OPERATORS = {"$and", "$or"}
ORDERED = {"$gt", "$gte", "$lt", "$lte"}


@dataclass(frozen=True)
class ConditionLimits:
    max_depth: int = 8
    max_clauses: int = 64
    max_bytes: int = 16_384


@dataclass(frozen=True)
class Problem:
    """Where a condition is wrong (a dotted location inside it) and why."""

    where: str
    reason: str


# ------------------------------------------------------------------------------- validation


def validate(condition: Any, limits: ConditionLimits = ConditionLimits()) -> list[Problem]:
    """Every problem of ``condition``; an empty list means it can be saved."""
    if not isinstance(condition, dict):
        return [Problem("", "a condition is a JSON object")]
    try:
        size = len(orjson.dumps(condition))
    except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits
        return [Problem("", f"is not storable JSON: {exc}")]
    if size > limits.max_bytes:
        return [Problem("", f"is {size} bytes; the limit is {limits.max_bytes}")]
    problems: list[Problem] = []
    clauses = _check_query(condition, "", 1, limits, problems)
    if clauses > limits.max_clauses:
        problems.append(Problem("", f"has {clauses} clauses; the limit is {limits.max_clauses}"))
    return problems


def _join(where: str, part: str) -> str:
    return f"{where}.{part}" if where else part


def _check_query(
    query: dict[str, Any], where: str, depth: int, limits: ConditionLimits, out: list[Problem]
) -> int:
    if depth > limits.max_depth:
        out.append(Problem(where, f"nests deeper than {limits.max_depth} levels"))
        return 0
    clauses = 0
    for key, value in query.items():
        here = _join(where, key)
        if key in QUERY_OPERATORS:
            if not isinstance(value, list) or not value or not all(isinstance(q, dict) for q in value):
                out.append(Problem(here, f"{key} takes a non-empty array of conditions"))
                continue
            for index, sub in enumerate(value):
                clauses += _check_query(sub, f"{here}.{index}", depth + 1, limits, out)
        elif key.startswith("$"):
            out.append(Problem(here, f"unknown operator {key} (allowed here: $and, $or, or a field path)"))
        else:
            path_problem = _path_problem(key)
            if path_problem:
                out.append(Problem(here, path_problem))
                continue
            clauses += _check_field(value, here, depth + 1, limits, out)
    return clauses


def _path_problem(path: str) -> str | None:
    parts = path.split(".")
    if len(path) > 200:
        return "a path is at most 200 characters"
    if any(not part for part in parts):
        return "a path has no empty segment"
    if any(part.startswith("$") for part in parts):
        return "a path segment cannot start with '$'"
    return None


def _is_operator_doc(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(k.startswith("$") for k in value)


def _check_field(value: Any, where: str, depth: int, limits: ConditionLimits, out: list[Problem]) -> int:
    if isinstance(value, dict) and any(k.startswith("$") for k in value) and not _is_operator_doc(value):
        out.append(Problem(where, "mixes operators and fields; use only operators, or a literal object"))
        return 0
    if not _is_operator_doc(value):
        return 1  # a literal: implicit $eq
    if depth > limits.max_depth:
        out.append(Problem(where, f"nests deeper than {limits.max_depth} levels"))
        return 0
    clauses = 0
    for op, operand in value.items():
        here = f"{where}.{op}"
        clauses += 1
        if op not in FIELD_OPERATORS:
            allowed = " ".join(sorted(FIELD_OPERATORS))
            out.append(Problem(here, f"unknown operator {op} (allowed on a field: {allowed})"))
        elif op in ORDERED and (isinstance(operand, bool) or not isinstance(operand, int | float | str)):
            out.append(Problem(here, f"{op} compares with a number or a string"))
        elif op in ("$in", "$nin") and not isinstance(operand, list):
            out.append(Problem(here, f"{op} takes an array"))
        elif op == "$exists" and not isinstance(operand, bool):
            out.append(Problem(here, "$exists takes true or false"))
        elif op == "$not":
            if not _is_operator_doc(operand):
                out.append(Problem(here, '$not takes an object of operators, e.g. {"$gt": 5}'))
            else:
                clauses += _check_field(operand, here, depth + 1, limits, out) - 1
    return clauses


# ------------------------------------------------------------------------------ normalising


def normalise_path(path: str) -> str:
    """``total`` -> ``payload.total``; paths under the four roots stay as they are."""
    return path if path.split(".", 1)[0] in ROOTS else f"payload.{path}"


def compile_condition(condition: dict[str, Any]) -> dict[str, Any]:
    """The condition with every field path rooted (call only on a valid condition)."""
    compiled: dict[str, Any] = {}
    for key, value in condition.items():
        if key in QUERY_OPERATORS:
            compiled[key] = [compile_condition(sub) for sub in value]
        else:
            compiled[normalise_path(key)] = value
    return compiled


# ------------------------------------------------------------------------------- evaluation


class Document:
    """An event as conditions read it (``data``: the event as a dict), with the values each path
    reached so far: the rules of an application often read the same few paths, each once per
    event this way."""

    __slots__ = ("data", "reached")

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.reached: dict[str, list[Any]] = {}

    def values(self, path: str, parts: list[str]) -> list[Any]:
        found = self.reached.get(path)
        if found is None:
            found = self.reached[path] = _get(self.data, parts)
        return found


Matcher = Callable[[Document], bool]
Test = Callable[[list[Any]], bool]  # on the values a path reaches


def compile_matcher(condition: dict[str, Any]) -> Matcher:
    """``condition`` (valid; paths rooted or not) as one function of an event ``Document``, built
    once: evaluating it walks no operator names and splits no paths."""
    return _all_of([_compile_clause(key, value) for key, value in condition.items()])


def _all_of(matchers: list[Matcher]) -> Matcher:
    if len(matchers) == 1:
        return matchers[0]

    def all_of(document: Document) -> bool:
        for matcher in matchers:  # noqa: SIM110 (a loop: no generator made per evaluation)
            if not matcher(document):
                return False
        return True

    return all_of


def _any_of(matchers: list[Matcher]) -> Matcher:
    def any_of(document: Document) -> bool:
        for matcher in matchers:  # noqa: SIM110 (a loop: no generator made per evaluation)
            if matcher(document):
                return True
        return False

    return any_of


def matches(condition: dict[str, Any], document: dict[str, Any]) -> bool:
    """Whether ``document`` (an event as a dict) meets ``condition`` (compiles it each call:
    to evaluate a condition often, keep ``compile_matcher(condition)``)."""
    return compile_matcher(condition)(Document(document))


def explain(condition: dict[str, Any], document: dict[str, Any]) -> list[str]:
    """The top-level clauses the document fails, each with the values found (empty: it matches)."""
    reasons = []
    for key, value in compile_condition(condition).items():  # paths rooted, as they are read
        if _compile_clause(key, value)(Document(document)):
            continue
        if key in QUERY_OPERATORS:
            reasons.append(f"{key} {orjson.dumps(value).decode()} is false")
        else:
            found = _get(document, key.split("."))
            seen = orjson.dumps(found[0] if len(found) == 1 else found).decode() if found else "missing"
            reasons.append(f"{key} {orjson.dumps(value).decode()} is false (value: {seen})")
    return reasons


def _compile_clause(key: str, value: Any) -> Matcher:
    if key == "$and":
        return _all_of([compile_matcher(sub) for sub in value])
    if key == "$or":
        return _any_of([compile_matcher(sub) for sub in value])
    path = normalise_path(key)
    parts = path.split(".")
    if _is_operator_doc(value):
        tests = [_compile_operator(op, operand) for op, operand in value.items()]
    else:
        tests = [_compile_operator("$eq", value)]
    if len(tests) == 1:  # the common case, with Document.values inlined
        (test,) = tests

        def one_test(document: Document) -> bool:
            reached = document.reached
            found = reached.get(path)
            if found is None:
                found = reached[path] = _get(document.data, parts)
            return test(found)

        return one_test

    def clause(document: Document) -> bool:
        found = document.values(path, parts)
        return all(test(found) for test in tests)

    return clause


def _get(document: Any, parts: list[str]) -> list[Any]:
    """Every value the path reaches, MongoDB-style: objects are walked into; an array is walked
    into by position (``items.0``) and through each of its objects (``items.sku``)."""
    value = document
    for at, part in enumerate(parts):  # objects only, the common case: no recursion
        if type(value) is not dict:
            found: list[Any] = []
            _collect(value, parts, at, found)
            return found
        if part not in value:
            return []
        value = value[part]
    return [value]


def _collect(value: Any, parts: list[str], at: int, found: list[Any]) -> None:
    while at < len(parts):
        kind = type(value)
        if kind is dict:
            if parts[at] not in value:
                return
            value = value[parts[at]]
            at += 1
        elif kind is list:
            part = parts[at]
            if part.isdecimal() and int(part) < len(value):
                _collect(value[int(part)], parts, at + 1, found)
            for element in value:
                if type(element) is dict:
                    _collect(element, parts, at, found)
            return
        else:
            return
    found.append(value)


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
# The Python types of the JSON values that compare, by kind (exact types: a bool is no number).
_TYPES: dict[str, tuple[type, ...]] = {"number": (int, float), "str": (str,)}


def _compile_operator(op: str, operand: Any) -> Test:
    if op == "$eq":
        return _compile_eq(operand)
    if op == "$ne":
        eq = _compile_eq(operand)
        return lambda values: not eq(values)
    if op in ("$in", "$nin"):
        items = [_compile_eq(item) for item in operand]
        if op == "$in":
            return lambda values: any(item(values) for item in items)
        return lambda values: not any(item(values) for item in items)
    if op == "$exists":
        wanted = bool(operand)
        return lambda values: bool(values) is wanted
    if op == "$not":
        subs = [_compile_operator(sub, sub_operand) for sub, sub_operand in operand.items()]
        return lambda values: not all(sub(values) for sub in subs)
    return _scalar_test(_TYPES[_kind(operand)], _ORDER[op], operand)


def _compile_eq(operand: Any) -> Test:
    kind = _kind(operand)
    if kind in _TYPES:  # the common case: a number or a string, compared without recursion
        return _scalar_test(_TYPES[kind], operator.eq, operand)
    if operand is None:  # a missing field equals null
        return lambda values: not values or any(candidate is None for candidate in _candidates(values))
    return lambda values: any(equal(candidate, operand) for candidate in _candidates(values))


def _scalar_test(types: tuple[type, ...], compare: Callable[[Any, Any], bool], operand: Any) -> Test:
    """Whether a value, or an element of an array value, is of ``types`` and ``compare(it, operand)``
    (numbers and strings: ``compare`` gives a bool)."""

    def test(values: list[Any]) -> bool:
        for value in values:
            kind = type(value)
            if kind in types:
                if compare(value, operand):
                    return True
            elif kind is list:
                for element in value:
                    if type(element) in types and compare(element, operand):
                        return True
        return False

    return test


def _candidates(values: list[Any]) -> Iterator[Any]:
    for value in values:
        yield value
        if isinstance(value, list):
            yield from value


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


def equal(a: Any, b: Any) -> bool:
    """MongoDB equality on JSON values: typed (``true`` is not ``1``), objects compared in order."""
    if _kind(a) != _kind(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(equal(a[k], b[k]) for k in a)
    return bool(a == b)
