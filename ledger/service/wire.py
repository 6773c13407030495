"""Validated domain commands and their outcomes as bytes, for the hop from a
replica (or a front process) to the writer.

Generic over the dataclasses of ledger.domain.commands and ledger.domain.model,
so a new command (a batch of commands, say) travels without a change here as
long as it is made of dataclasses, tuples, lists, str-keyed dicts, enums,
datetimes and scalars. The decoded command is equal to the encoded one, field
for field, so its fingerprint (what an idempotency key is bound to) is too;
tests/unit/test_wire.py holds that for every command.

Results of the kinds a replay can answer travel in the idempotency record's
form (ledger.service.outcomes): what the caller gets is then exactly what a
replay of its key would answer (a reservation's lot allocations, which no
reply shows, are left out), and it costs the writer, the process every
command waits on, a fifth of the generic form. Any other result (a new kind)
takes the generic form.

Only the writer's side decodes commands, and only from an authenticated peer
(ledger.transport.internal); the class tag is looked up in a fixed table, so
the bytes can name nothing else.
"""

from __future__ import annotations

import dataclasses
import enum
from datetime import datetime
from typing import Any

import orjson

from ledger.domain import commands, errors, model
from ledger.domain.errors import FieldViolation, LedgerError
from ledger.domain.model import GrantResult, GroupResult, LimitsResult, ReservationResult, Result
from ledger.service import outcomes as recorded


def _types(*modules: Any) -> tuple[dict[str, type[Any]], dict[str, type[enum.Enum]]]:
    classes: dict[str, type[Any]] = {}
    enums: dict[str, type[enum.Enum]] = {}
    for module in modules:
        for name, value in vars(module).items():
            if not isinstance(value, type) or value.__module__ != module.__name__:
                continue
            if issubclass(value, enum.Enum):
                enums[name] = value
            elif dataclasses.is_dataclass(value):
                classes[name] = value
    return classes, enums


_CLASSES, _ENUMS = _types(commands, model)


def _reasons() -> dict[str, type[LedgerError]]:
    found: dict[str, type[LedgerError]] = {}
    todo: list[type[LedgerError]] = [LedgerError]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.reason, cls)
        todo.extend(cls.__subclasses__())
    return found


_ERRORS = _reasons()


class WireError(Exception):
    """Bytes that are not an encoded command or outcome (a bug or a foreign peer)."""


def _to(v: Any) -> Any:
    if v is None or isinstance(v, (str, int, float)):
        return v
    if isinstance(v, datetime):
        return {"@dt": v.isoformat()}
    if isinstance(v, enum.Enum):
        return {"@e": type(v).__name__, "v": v.value}
    if isinstance(v, tuple):
        return {"@t": [_to(x) for x in v]}
    if isinstance(v, list):
        return [_to(x) for x in v]
    if isinstance(v, dict):
        return {"@d": {str(k): _to(x) for k, x in v.items()}}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        name = type(v).__name__
        if _CLASSES.get(name) is not type(v):
            raise WireError(f"{name} is not a domain type")
        fields = {f.name: _to(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        return {"@c": name, "f": fields}
    raise WireError(f"cannot encode a {type(v).__name__}")


def _from(v: Any) -> Any:
    if isinstance(v, list):
        return [_from(x) for x in v]
    if not isinstance(v, dict):
        return v
    if "@t" in v:
        return tuple(_from(x) for x in v["@t"])
    if "@d" in v:
        return {k: _from(x) for k, x in v["@d"].items()}
    if "@dt" in v:
        return datetime.fromisoformat(v["@dt"])
    if "@e" in v:
        enum_cls = _ENUMS.get(v["@e"])
        if enum_cls is None:
            raise WireError(f"unknown enum {v['@e']!r}")
        return enum_cls(v["v"])
    if "@c" in v:
        cls = _CLASSES.get(v["@c"])
        if cls is None:
            raise WireError(f"unknown type {v['@c']!r}")
        return cls(**{k: _from(x) for k, x in v["f"].items()})
    raise WireError("untagged object")


def encode_commands(cmds: list[commands.MutatingCommand]) -> bytes:
    return orjson.dumps([_to(cmd) for cmd in cmds])


def decode_commands(data: bytes) -> list[commands.MutatingCommand]:
    """Errors: WireError."""
    try:
        decoded = [_from(item) for item in orjson.loads(data)]
    except (ValueError, TypeError, KeyError) as exc:
        raise WireError(f"undecodable commands: {exc}") from exc
    for cmd in decoded:
        if not isinstance(cmd, (commands.Command, commands.ExpireDue)):
            raise WireError(f"{type(cmd).__name__} is not a command")
    return decoded


Outcome = tuple[Result, bool] | LedgerError


def _error(exc: LedgerError) -> dict[str, Any]:
    out: dict[str, Any] = {
        "reason": exc.reason,
        "message": exc.message,
        "metadata": exc.metadata,
        "replayed": exc.replayed,
    }
    if isinstance(exc, errors.InvalidArgument):
        out["violations"] = [[v.field, v.description] for v in exc.violations]
    if isinstance(exc, errors.RateLimited):
        out["retry_after_s"] = exc.retry_after_s
    return out


def _raise_error(d: dict[str, Any]) -> LedgerError:
    cls = _ERRORS.get(d["reason"], LedgerError)
    exc: LedgerError
    if cls is errors.InvalidArgument:
        exc = errors.InvalidArgument([FieldViolation(f, desc) for f, desc in d["violations"]])
    elif cls is errors.RateLimited:
        exc = errors.RateLimited(d["message"], float(d["retry_after_s"]))
    else:
        exc = cls(d["message"], d["metadata"])
    exc.replayed = bool(d["replayed"])
    return exc


_RECORDED = (GrantResult, ReservationResult, GroupResult, LimitsResult)


def _outcome(item: dict[str, Any]) -> Outcome:
    if "err" in item:
        return _raise_error(item["err"])
    if "rec" in item:
        result = recorded.decode(item["rec"])
        if isinstance(result, LedgerError):
            raise WireError("a result in the recorded form decoded as an error")
        return result, bool(item["replayed"])
    return _from(item["ok"]), bool(item["replayed"])


def encode_outcomes(outcomes: list[Outcome]) -> bytes:
    out: list[Any] = []
    for o in outcomes:
        if isinstance(o, LedgerError):
            out.append({"err": _error(o)})
        else:
            result, replayed = o
            if result is None or type(result) in _RECORDED:
                out.append({"rec": recorded.encode(result), "replayed": replayed})
            else:
                out.append({"ok": _to(result), "replayed": replayed})
    return orjson.dumps(out)


def decode_outcomes(data: bytes) -> list[Outcome]:
    """Errors: WireError."""
    try:
        items = orjson.loads(data)
        return [_outcome(item) for item in items]
    except (ValueError, TypeError, KeyError) as exc:
        raise WireError(f"undecodable outcomes: {exc}") from exc
