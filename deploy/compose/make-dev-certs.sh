#!/bin/sh
# compose's `certs` service: a THROWAWAY certificate authority, the server's
# certificate and key, one client certificate, and a caller file naming it,
# made once into the `certs` volume (kept across restarts; `docker compose
# down -v` discards them). For a trial on one machine only: the CA key sits in
# the same volume. Production takes its certificates from its own CA
# (deploy/k8s: Secrets, or cert-manager).
set -eu
out=/certs
if [ -s "$out/callers.toml" ]; then
  echo "certs: already made in $out"
  exit 0
fi
umask 077
step certificate create "creditledger dev CA" "$out/ca.crt" "$out/ca.key" \
  --profile root-ca --no-password --insecure --not-after 2160h
step certificate create ledger "$out/server.crt" "$out/server.key" \
  --profile leaf --ca "$out/ca.crt" --ca-key "$out/ca.key" --no-password --insecure \
  --not-after 720h --san ledger --san localhost --san 127.0.0.1
step certificate create dev-client "$out/client.crt" "$out/client.key" \
  --profile leaf --ca "$out/ca.crt" --ca-key "$out/ca.key" --no-password --insecure \
  --not-after 720h --san spiffe://creditledger.local/dev-client
cat > "$out/callers.toml" <<'TOML'
# The compose trial's one caller: whoever holds /certs/client.crt and its key.
[[caller]]
id = "dev-client"
permissions = ["admin"]
account_prefixes = ["*"]
cert_identities = ["uri:spiffe://creditledger.local/dev-client"]
TOML
# The server (uid 10001) reads its key, the client CA and the caller file.
chown 10001:10001 "$out/server.crt" "$out/server.key" "$out/ca.crt" "$out/callers.toml" \
  "$out/client.crt" "$out/client.key"
chmod 0400 "$out/server.key" "$out/client.key" "$out/ca.key"
chmod 0444 "$out/server.crt" "$out/ca.crt" "$out/client.crt" "$out/callers.toml"
echo "certs: made a throwaway CA, server and client certificates and callers.toml in $out"
