"""A LedgerService that does nothing: the ceiling of Python gRPC and of the harness.

`python -m tests.bench --noop-server` runs the sweep against it (pgbench
included), which says how many RPCs per second the load generator and one
grpc.aio process can exchange on this machine before any ledger work. It
takes `ledger serve`'s flags and ignores the database.
"""

from __future__ import annotations

import argparse
import itertools
import threading
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import grpc
import uvloop
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc as pb_grpc

_ids = itertools.count()


def _reservation() -> pb.Reservation:
    return pb.Reservation(reservation_id=f"noop-{next(_ids)}", state=pb.Reservation.STATE_CLOSED)


class NoopLedger(pb_grpc.LedgerServiceServicer):
    """Answers every mutating RPC with success and a made-up reservation id."""

    async def CreateAccount(self, request: Any, context: Any) -> pb.CreateAccountResponse:
        return pb.CreateAccountResponse()

    async def Grant(self, request: Any, context: Any) -> pb.GrantResponse:
        return pb.GrantResponse()

    async def Charge(self, request: Any, context: Any) -> pb.ChargeResponse:
        return pb.ChargeResponse(reservation=_reservation())

    async def Reserve(self, request: Any, context: Any) -> pb.ReserveResponse:
        return pb.ReserveResponse(reservation=_reservation())

    async def Settle(self, request: Any, context: Any) -> pb.SettleResponse:
        return pb.SettleResponse()

    async def Release(self, request: Any, context: Any) -> pb.ReleaseResponse:
        return pb.ReleaseResponse()

    async def Refund(self, request: Any, context: Any) -> pb.RefundResponse:
        return pb.RefundResponse()

    async def GetBalance(self, request: Any, context: Any) -> pb.GetBalanceResponse:
        return pb.GetBalanceResponse()

    async def GetAccount(self, request: Any, context: Any) -> pb.GetAccountResponse:
        return pb.GetAccountResponse()

    async def ReserveGroup(self, request: Any, context: Any) -> pb.ReserveGroupResponse:
        return pb.ReserveGroupResponse()

    async def GetReservation(self, request: Any, context: Any) -> pb.GetReservationResponse:
        return pb.GetReservationResponse()

    async def GetReservationGroup(
        self, request: Any, context: Any
    ) -> pb.GetReservationGroupResponse:
        return pb.GetReservationGroupResponse()

    async def SetBalanceAlert(self, request: Any, context: Any) -> pb.SetBalanceAlertResponse:
        return pb.SetBalanceAlertResponse()

    async def ListBalanceAlerts(self, request: Any, context: Any) -> pb.ListBalanceAlertsResponse:
        return pb.ListBalanceAlertsResponse()

    async def DeleteBalanceAlert(self, request: Any, context: Any) -> pb.DeleteBalanceAlertResponse:
        return pb.DeleteBalanceAlertResponse()

    async def GetStatement(self, request: Any, context: Any) -> pb.GetStatementResponse:
        return pb.GetStatementResponse()

    async def ListEntries(self, request: Any, context: Any) -> pb.ListEntriesResponse:
        return pb.ListEntriesResponse()

    async def ListReservations(self, request: Any, context: Any) -> pb.ListReservationsResponse:
        return pb.ListReservationsResponse()

    async def VoidGrant(self, request: Any, context: Any) -> pb.VoidGrantResponse:
        return pb.VoidGrantResponse(lot=pb.Lot(), balance=pb.Balance(), voided=0)

    async def CreateGrantSchedule(
        self, request: Any, context: Any
    ) -> pb.CreateGrantScheduleResponse:
        return pb.CreateGrantScheduleResponse(schedule=pb.GrantSchedule(), balance=pb.Balance())

    async def GetGrantSchedule(self, request: Any, context: Any) -> pb.GetGrantScheduleResponse:
        return pb.GetGrantScheduleResponse(schedule=pb.GrantSchedule())

    async def ListGrantSchedules(self, request: Any, context: Any) -> pb.ListGrantSchedulesResponse:
        return pb.ListGrantSchedulesResponse()

    async def UpdateGrantSchedule(
        self, request: Any, context: Any
    ) -> pb.UpdateGrantScheduleResponse:
        return pb.UpdateGrantScheduleResponse(schedule=pb.GrantSchedule())

    async def GetBreakage(self, request: Any, context: Any) -> pb.GetBreakageResponse:
        return pb.GetBreakageResponse()

    async def CancelGrantSchedule(
        self, request: Any, context: Any
    ) -> pb.CancelGrantScheduleResponse:
        return pb.CancelGrantScheduleResponse(schedule=pb.GrantSchedule(), balance=pb.Balance())

    async def WatchTransactions(
        self, request: Any, context: Any
    ) -> AsyncIterator[pb.WatchTransactionsResponse]:
        for _ in ():
            yield pb.WatchTransactionsResponse()

    async def SubmitBatch(self, request: Any, context: Any) -> pb.SubmitBatchResponse:
        return pb.SubmitBatchResponse(
            outcomes=[
                pb.BatchOutcome(charge=pb.ChargeResponse(reservation=_reservation()))
                for _ in request.commands
            ]
        )

    async def SetSpendingLimits(self, request: Any, context: Any) -> pb.SetSpendingLimitsResponse:
        return pb.SetSpendingLimitsResponse()

    async def SetMemberCap(self, request: Any, context: Any) -> pb.SetMemberCapResponse:
        return pb.SetMemberCapResponse()


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"# noop server: no ledger metrics\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


async def _serve(listen: str) -> None:
    server = grpc.aio.server()
    pb_grpc.add_LedgerServiceServicer_to_server(NoopLedger(), server)
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    """`serve --listen A --metrics-listen B [ignored ledger flags]`."""
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["serve"])
    ap.add_argument("--listen", required=True)
    ap.add_argument("--metrics-listen", required=True)
    flags, _ignored = ap.parse_known_args()
    host, _, port = flags.metrics_listen.rpartition(":")
    http = HTTPServer((host, int(port)), _Metrics)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    uvloop.run(_serve(flags.listen))


if __name__ == "__main__":
    main()
