"""Database roles: the owner that migrates, and the serving role that only serves.

`ledger migrate` runs as the owner (it creates and alters the tables). With
`--serving-role NAME` it also creates NAME (LOGIN, no superuser, no CREATEDB,
no CREATEROLE, no ownership of anything) and grants it exactly the rights the
serving code uses, table by table (SERVING_RIGHTS): the journal (`entries`)
only SELECT and INSERT, so the serving role can neither change a posted entry
nor, not owning the table, switch its immutability trigger off
(`ALTER TABLE ... DISABLE TRIGGER` needs ownership), nor run any DDL.

`ledger serve` with a database URL does not migrate: it checks that the
schema is exactly the one its code knows (`schema_problem`) and refuses to
start otherwise (the embedded PostgreSQL of `make run` still migrates at start).
"""

from __future__ import annotations

import logging
import re

import asyncpg

log = logging.getLogger("ledger.storage")

#: Table -> the privileges the serving code uses on it (docs/security.md).
#: INSERT ... ON CONFLICT DO UPDATE needs INSERT and UPDATE. `idempotency` is
#: partitioned (migration 0002) and always used through the parent, where the
#: rights are checked: its partitions (made later by `ledger maintain`, as the
#: owner) get no grant at all, and expired keys leave by DROP of a partition
#: (the owner's job), never by DELETE. The archive is written by `ledger
#: archive reservations` (an owner command); `serve` only reads it.
SERVING_RIGHTS: dict[str, tuple[str, ...]] = {
    "accounts": ("SELECT", "INSERT"),
    "balances": ("SELECT", "INSERT", "UPDATE"),
    "lots": ("SELECT", "INSERT", "UPDATE"),
    "grant_schedules": ("SELECT", "INSERT", "UPDATE"),
    "reservations": ("SELECT", "INSERT", "UPDATE"),
    "entries": ("SELECT", "INSERT"),
    # Set/Delete (the caller's), the writer's state and basis updates.
    "balance_alerts": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    "alert_events": ("SELECT", "INSERT"),
    "idempotency": ("SELECT", "INSERT"),
    "reservations_archive": ("SELECT",),
    # SetSpendingLimits appends a row per floor set; nothing updates or deletes one.
    "spending_limits": ("SELECT", "INSERT"),
    "schema_migrations": ("SELECT",),
    # The election renews and takes the lease (UPDATE); the fence locks it FOR KEY SHARE.
    "writer_lease": ("SELECT", "UPDATE"),
}
#: A table a later migration adds without an entry above gets these, and a
#: warning: add it to SERVING_RIGHTS with only what the code uses.
UNLISTED_RIGHTS: tuple[str, ...] = ("SELECT", "INSERT", "UPDATE", "DELETE")

_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class RoleError(ValueError):
    """The serving role cannot be set up as asked; the message says why."""


def _ident(name: str) -> str:
    """A quoted SQL identifier for a name already checked against _ROLE_NAME or
    read from the catalogue (DDL cannot take $n parameters)."""
    return '"' + name.replace('"', '""') + '"'


async def grant_serving_role(conn: asyncpg.Connection, role: str, password: str | None) -> None:
    """Create `role` if missing and give it exactly SERVING_RIGHTS; run as the owner.

    Errors: RoleError (a bad name, or an existing role that is a superuser or
    owns tables: it would not be least privilege)."""
    if not _ROLE_NAME.fullmatch(role):
        raise RoleError("--serving-role must be 1-63 chars of [a-z0-9_], not starting with a digit")
    r = _ident(role)
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles"
            " WHERE rolname = $1",
            role,
        )
        if row is None:
            await conn.execute(
                f"CREATE ROLE {r} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"
            )
        elif any(row.values()):
            raise RoleError(
                f"role {role} exists with superuser, createrole, createdb or bypassrls:"
                " a serving role must have none of them"
            )
        if password:
            # The password travels as a literal (ALTER ROLE takes no parameters),
            # escaped by PostgreSQL's own quote_literal; it is never logged.
            literal = await conn.fetchval("SELECT quote_literal($1::text)", password)
            await conn.execute(f"ALTER ROLE {r} PASSWORD {literal}")
        owned = await conn.fetchval(
            "SELECT count(*) FROM pg_class c JOIN pg_roles o ON o.oid = c.relowner"
            " WHERE o.rolname = $1",
            role,
        )
        if owned:
            raise RoleError(f"role {role} owns {owned} relations: the serving role must own none")
        db = await conn.fetchval("SELECT current_database()")
        schema = await conn.fetchval("SELECT current_schema()")
        await conn.execute(f"GRANT CONNECT ON DATABASE {_ident(db)} TO {r}")
        await conn.execute(f"REVOKE CREATE ON DATABASE {_ident(db)} FROM {r}")
        await conn.execute(f"GRANT USAGE ON SCHEMA {_ident(schema)} TO {r}")
        await conn.execute(f"REVOKE CREATE ON SCHEMA {_ident(schema)} FROM {r}")
        await conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {_ident(schema)} FROM {r}")
        tables = [
            t
            for (t,) in await conn.fetch(
                # Not the partitions: they are reached through their parent only.
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
                " ORDER BY 1",
                schema,
            )
        ]
        for table in tables:
            rights = SERVING_RIGHTS.get(table)
            if rights is None:
                log.warning(
                    "table %s is not in ledger.storage.roles.SERVING_RIGHTS: granting %s",
                    table,
                    ", ".join(UNLISTED_RIGHTS),
                )
                rights = UNLISTED_RIGHTS
            await conn.execute(
                f"GRANT {', '.join(rights)} ON {_ident(schema)}.{_ident(table)} TO {r}"
            )
        # Identity columns (entries.entry_id) need no sequence rights; any other
        # sequence a migration adds is usable, never alterable.
        await conn.execute(
            f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {_ident(schema)} TO {r}"
        )
    log.info("serving role %s: rights granted on %d tables", role, len(tables))


async def applied_versions(conn: asyncpg.Connection) -> set[int] | None:
    """The migration versions recorded in the database; None when it has no schema yet."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return None
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


def schema_problem(applied: set[int] | None, known: set[int]) -> str | None:
    """Why a server whose code knows `known` migrations must not serve a database
    with `applied` ones; None when they are the same."""
    if applied is None:
        return "the database has no ledger schema: run `ledger migrate` (as the owner role) first"
    unknown = sorted(applied - known)
    if unknown:
        return (
            f"the database has schema version(s) {unknown} that this server does not know"
            " (a newer release migrated it): deploy that release, not this one"
        )
    missing = sorted(known - applied)
    if missing:
        return (
            f"the database lacks schema version(s) {missing}: run `ledger migrate`"
            " (as the owner role) before serving"
        )
    return None
