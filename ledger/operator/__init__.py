"""Operator commands of the `ledger` CLI: a gRPC client of a running server."""
