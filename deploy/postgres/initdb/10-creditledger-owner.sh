#!/bin/sh
# Runs once, when compose's PostgreSQL initialises its data directory: the
# owner role that `ledger migrate` logs in as (it owns the database and the
# tables; not a superuser). The serving role is made by `ledger migrate
# --serving-role` with only the rights `serve` uses (docs/security.md).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v owner_password="$CREDITLEDGER_OWNER_PASSWORD" <<'SQL'
CREATE ROLE creditledger_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'owner_password';
ALTER DATABASE ledger OWNER TO creditledger_owner;
REVOKE ALL ON DATABASE ledger FROM PUBLIC;
SQL
