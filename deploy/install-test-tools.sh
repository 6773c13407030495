#!/usr/bin/env bash
# Installs the system tools that some tests use (Prometheus/promtool, Node.js).
# Each is optional: the tests that need a missing tool skip and say so.
set -u
need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "install-test-tools: installing ${need[*]} from Debian's packages"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}") \
    >/tmp/creditledger-apt.log 2>&1 || echo "install-test-tools: could not install ${need[*]} (see /tmp/creditledger-apt.log); those tests will skip"
fi
exit 0
