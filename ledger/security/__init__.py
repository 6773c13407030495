"""Callers and their credentials: the caller file, token hashes, rate limits.

Standard library and ledger.domain only; the gRPC side (TLS credentials, the
interceptor that authenticates every call) is ledger.transport.auth.
"""
