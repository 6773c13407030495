"""Helpers for tests that read google.rpc.Status details off a real RPC error."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2


def status_of(err: grpc.aio.AioRpcError | grpc.RpcError) -> status_pb2.Status:
    trailers: Any = err.trailing_metadata()
    for key, value in trailers or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status()
            status.ParseFromString(value)
            return status
    raise AssertionError(f"no status details on {err!r}")


def error_info(err: grpc.aio.AioRpcError | grpc.RpcError) -> error_details_pb2.ErrorInfo:
    for detail in status_of(err).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo in status details")


def field_violations(err: grpc.aio.AioRpcError | grpc.RpcError) -> list[str]:
    for detail in status_of(err).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return [v.field for v in bad.field_violations]
    return []


def replayed(call_trailers: Any) -> bool:
    return any(k == "idempotent-replayed" and v == "true" for k, v in call_trailers or ())
