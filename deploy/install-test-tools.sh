#!/usr/bin/env bash
# Installs the system tools that some tests use (Prometheus and promtool, from
# Debian's `prometheus` package; Patroni and etcd for the failover test and
# `make failover`, from `patroni` and `etcd-server`). Each is optional: the tests that need a
# missing tool skip and say so. Idempotent and quiet when everything is there;
# never fails `make test` by itself.
set -u
log=/tmp/creditledger-apt.log
need=()
# One package gives both binaries; the live test needs the server, the rule
# tests need promtool.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  need+=(prometheus)
fi
# The HA cluster of tests/failover: Patroni 3.0 with an etcd 3.4 DCS (python3-etcd
# is Patroni's etcd client). Debian's policy-rc.d keeps etcd's own service from
# starting on the default ports.
if ! command -v patroni >/dev/null 2>&1; then
  need+=(patroni python3-etcd)
fi
if ! command -v etcd >/dev/null 2>&1; then
  need+=(etcd-server)
fi
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-tools: ${need[*]} missing and cannot be installed here (needs root and apt-get); those tests will skip"
  exit 0
fi
echo "install-test-tools: installing ${need[*]} from Debian's packages"
# Bounded: a hung mirror must not hang `make test`.
if ! (timeout 600 apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "${need[@]}") \
    >"$log" 2>&1; then
  echo "install-test-tools: could not install ${need[*]} (see $log); those tests will skip"
fi
exit 0
