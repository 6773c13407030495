"""The benchmark of issue 9: `python -m tests.bench` (or `make bench`).

It starts the server on a fresh database, creates and funds its accounts,
drives load through the real generated gRPC stubs from several client
processes, runs pgbench's tpcb-like on the same PostgreSQL for the same time
and client count, and reports throughput, latency, errors, serialization
retries, RSS and CPU shares. See docs/performance.md.
"""
