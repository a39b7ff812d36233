"""Hot-path statements run on the database driver's cursor (issue 19).

A Core statement already built once (``functools.cache``) still costs 25–40 µs of SQLAlchemy's
Python per execution — cache key, execution context, parameter and result processing — against
3–10 µs for the driver. The processing host runs about twenty such statements per declaration.
Here each is compiled once per dialect and set of parameter names, exactly as SQLAlchemy compiles
it, and run on the transaction's own DBAPI cursor with the same type processors SQLAlchemy
would apply (dates, JSON, booleans) in both directions: the same SQL, the same stored bytes.

Limits, by design:

- **No flush.** A fast statement never flushes the session first: for reads and writes of rows
  nothing pending can change (the callers already said so with ``no_autoflush``).
- **No engine events** (``before_cursor_execute`` and the like): nothing of ours listens to them
  on the hot path.
- Statements SQLAlchemy renders at execution (``IN`` with an expanding list, literal-execute
  parameters) and required values that are missing are refused at preparation; such statements
  run through SQLAlchemy as before (``execute`` falls back by itself).
- Driver errors are raised as SQLAlchemy's (``sqlalchemy.exc.OperationalError``...), so a busy
  database is retried by the processing runner as before, never taken for a poisonous message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar, cast

from sqlalchemy import Table, bindparam, exc
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session, class_mapper, make_transient_to_detached
from sqlalchemy.orm.attributes import instance_dict, manager_of_class
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler

Processor = Callable[[Any], Any] | None


class Prepared:
    """One statement compiled for one dialect and one set of parameter names."""

    __slots__ = ("_results", "dialect", "positional", "result_types", "slots", "sql")

    def __init__(self, statement: Executable, dialect: Dialect, keys: Sequence[str]) -> None:
        compiled = cast(ClauseElement, statement).compile(dialect=dialect, column_keys=list(keys))
        if not isinstance(compiled, SQLCompiler):
            raise ValueError("not a SQL statement")
        if compiled.post_compile_params or compiled.literal_execute_params:
            raise ValueError("rendered at execution")  # expanding IN, literal_execute
        self.sql: str = compiled.string
        self.dialect = dialect
        self.positional = bool(compiled.positional)
        processors = compiled._bind_processors
        by_name = {name: bind for bind, name in compiled.bind_names.items()}
        escaped: Mapping[str, str] = compiled.escaped_bind_names or {}
        names = list(compiled.positiontup or ()) if self.positional else list(by_name)
        given = set(keys)
        # Each slot: the key the caller gives (or None: the value compiled in), the value compiled
        # in, the processor, and the name in the SQL (named paramstyles).
        self.slots: list[tuple[str | None, Any, Processor, str]] = []
        for name in names:
            bind = by_name[name]
            if bind.key in given:
                source: str | None = bind.key
            elif name in given:
                source = name
            elif bind.required or bind.callable is not None:
                raise ValueError(f"no value for {bind.key!r}")
            else:
                source = None
            processor = processors.get(name)
            if processor is not None and not callable(processor):
                raise ValueError("tuple parameter")  # one processor per element: left to SQLAlchemy
            self.slots.append((source, bind.value, processor, escaped.get(name, name)))
        self.result_types = [entry[3] for entry in compiled._result_columns]
        self._results: list[Processor] | None = None

    def arguments(self, params: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        values = []
        for source, constant, processor, _name in self.slots:
            value = params[source] if source is not None else constant
            values.append(processor(value) if processor is not None else value)
        if self.positional:
            return values
        return {name: value for (_s, _c, _p, name), value in zip(self.slots, values, strict=True)}

    def rows(self, raw: Sequence[Any], description: Any) -> list[tuple[Any, ...]]:
        if self._results is None:
            self._results = [
                type_._cached_result_processor(self.dialect, column[1])
                for type_, column in zip(self.result_types, description, strict=False)
            ]
        processors = self._results
        if not any(processors):
            return [tuple(row) for row in raw]
        return [tuple(p(v) if p is not None else v for p, v in zip(processors, row, strict=False)) for row in raw]


class Result(NamedTuple):
    rows: list[tuple[Any, ...]]
    rowcount: int

    def scalar(self) -> Any:
        """The first column of the first row, or None (no row)."""
        return self.rows[0][0] if self.rows else None


# Keyed by the statement's and the dialect's ids, each kept alive by its entry (an id is only
# reused once its object is gone); bounded for test runs that make many engines.
_prepared: dict[tuple[int, int, tuple[str, ...]], tuple[Executable, Dialect, Prepared | None]] = {}


def _prepare(statement: Executable, dialect: Dialect, keys: tuple[str, ...]) -> Prepared | None:
    key = (id(statement), id(dialect), keys)
    entry = _prepared.get(key)
    if entry is not None and entry[0] is statement and entry[1] is dialect:
        return entry[2]
    try:
        prepared: Prepared | None = Prepared(statement, dialect, keys)
    except (ValueError, exc.CompileError):
        prepared = None  # run through SQLAlchemy
    if len(_prepared) >= 4096:
        _prepared.clear()
    _prepared[key] = (statement, dialect, prepared)
    return prepared


def execute(session: Session, statement: Executable,
            params: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Result:
    """Run ``statement`` (built once and kept: ``functools.cache``) in the session's transaction,
    without flushing. A sequence of parameter sets runs it for each (``executemany``: no rows)."""
    return run(session.connection(), statement, params)


def run(connection: Connection, statement: Executable,
        params: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Result:
    many = not isinstance(params, Mapping)
    sets: Sequence[Mapping[str, Any]] = params if not isinstance(params, Mapping) else [params]
    if not sets:
        return Result([], 0)
    dialect = connection.dialect
    keys = tuple(sorted(sets[0]))
    prepared = _prepare(statement, dialect, keys)
    if prepared is None or (many and any(tuple(sorted(p)) != keys for p in sets)):
        result = connection.execute(statement, list(sets) if many else sets[0])
        rows = [tuple(row) for row in result] if result.returns_rows else []
        return Result(rows, result.rowcount)
    arguments = [prepared.arguments(p) for p in sets]
    cursor = connection.connection.cursor()
    try:
        try:
            if many:
                cursor.executemany(prepared.sql, arguments)  # type: ignore[arg-type]
            else:
                cursor.execute(prepared.sql, arguments[0])
            description = cursor.description
            raw = cursor.fetchall() if description is not None else []
        except dialect.loaded_dbapi.Error as error:
            raise exc.DBAPIError.instance(prepared.sql, arguments, error, dialect.loaded_dbapi.Error,
                                          dialect=dialect) from error
        rows = prepared.rows(raw, description) if description is not None else []
        return Result(rows, cursor.rowcount)
    finally:
        cursor.close()


def load(session: Session, model: type[Any], statement: Executable, params: Mapping[str, Any]) -> Any:
    """The ``model`` object of the first row of ``statement`` (see ``load_all``), or None."""
    found = load_all(session, model, statement, params)
    return found[0] if found else None


def load_all(session: Session, model: type[Any], statement: Executable, params: Mapping[str, Any]) -> list[Any]:
    """The ``model`` objects of the rows of ``statement`` (which selects every column of the
    model's table, in the table's order), attached to the session as a query would load them.
    An object the session already holds is returned as it is, as a query would."""
    table = cast(Table, model.__table__)
    keys = [c.key for c in table.c]
    found = []
    for row in execute(session, statement, params).rows:
        values = dict(zip(keys, row, strict=True))
        pk = tuple(values[c.key] for c in table.primary_key.columns)
        obj = session.identity_map.get(session.identity_key(model, pk))
        if obj is None:
            obj = build(model, values)
            make_transient_to_detached(obj)
            session.add(obj)
        found.append(obj)
    return found


_M = TypeVar("_M")


def build(model: type[_M], values: Mapping[str, Any]) -> _M:
    """A ``model`` object holding ``values`` (attribute keys) as a query leaves a loaded row:
    in its state, without the constructor's attribute events and their history (issue 19: an
    outbox row, 17 µs by the constructor, 2 µs so). For ``make_transient_to_detached`` next,
    which marks them loaded. The models have no validators, custom constructors or mutable types
    that a constructor would apply."""
    manager = _MANAGERS.get(model)
    if manager is None:
        class_mapper(model)  # configured first, as a constructor would: instrumentation complete
        manager = _MANAGERS[model] = manager_of_class(model)
    obj = manager.new_instance()
    instance_dict(obj).update(values)
    return cast(_M, obj)


_MANAGERS: dict[type[Any], Any] = {}


def any_of(column: Any, count: int) -> Any:
    """``column IN (:k0, …)`` with one parameter per value (``any_of_params``): an expanding
    ``IN`` is rendered by SQLAlchemy at every execution and cannot run on the driver alone."""
    return column.in_([bindparam(f"k{i}", type_=column.type) for i in range(count)])


def any_of_params(values: Sequence[Any]) -> dict[str, Any]:
    return {f"k{i}": value for i, value in enumerate(values)}
