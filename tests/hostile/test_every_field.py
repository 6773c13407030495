"""Every RPC, every field, every extreme: never INTERNAL, never UNKNOWN (issue 13).

Where tests/hostile/test_random_requests.py samples at random, this walks the
request descriptors: for each RPC of LedgerService (new RPCs included, from
the descriptor), start from a valid request aimed at real accounts and
reservations, change ONE field to an extreme, and send it:

- every integer field (nested ones too: legs, Timestamp and Duration seconds
  and nanos): 0, -1, 1, 2**31, 2**53+1, 2**63-1, -2**63 (int32 fields: their
  own edges);
- every string field: empty, one past each usual limit, 4,000 and 60,000
  chars, past the 64 KiB message limit, control characters, NUL, right-to-left
  override, multi-byte text, and bytes that are not UTF-8 at all (patched into
  the serialized request);
- every map: too many entries, long keys and values, empty and control keys;
- every repeated message: none, 101, and each field of the first one as above;
- page tokens: forged positions at every int64 edge (today's format and the
  old one), truncated and extended real tokens, junk.

A reply must be OK or a documented refusal; INVALID_ARGUMENT must carry a
BadRequest naming the field changed. Afterwards the server is SERVING and
`ledger verify` passes. About 1,500 calls, 8 at a time.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from ledger.service import pagetoken
from tests.faults.calls import ASSET, new_key
from tests.support.rpc import error_info, field_violations
from tests.torture.fixtures import run_sync
from tests.torture.pg import create_database, drop_database
from tests.torture.rpc import CHANNEL_OPTIONS
from tests.torture.server import LedgerServer, health_status, run_verify

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SERVICE = pb.DESCRIPTOR.services_by_name["LedgerService"]
MESSAGE_BYTES_MAX = 64 * 1024
INT64_EDGES = [0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63)]
INT32_EDGES = [0, -1, 1, 2**31 - 1, -(2**31), 1_000_000_000, 1_000_001]
STRINGS = [
    "",
    " ",
    "a" * 65,
    "a" * 129,
    "a" * 257,
    "a" * 513,
    "a" * 4000,
    "a" * 60_000,
    "a" * 70_000,  # past the message limit: RESOURCE_EXHAUSTED from gRPC itself
    "\x00",
    "x\x00y",
    "x\ny",
    "\x1b[2J",
    "\x7f",
    "\u202eevil",
    "é" * 300,
    "\U0001f4b3" * 200,
    "' OR 1=1 --",
    "@system",
    "00000000-0000-0000-0000-000000000000",
]
NOT_UTF8 = b"\xff\xfe\xc0\x80"  # never valid UTF-8; replaces a 4-byte placeholder
MARK = "QQ!~"  # 4 ASCII bytes, patched into NOT_UTF8 on the wire
MAPS: list[dict[str, str]] = [
    {f"k{i}": "v" for i in range(33)},
    {"k" * 65: "v"},
    {"k": "v" * 513},
    {"k": "é" * 257},
    {"": "v"},
    {"k\n": "v"},
    {"k": "v\x00"},
    {"k": "\U0001f4b3" * 129},
    {"k": "a" * 60_000},
]
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
}


@dataclass
class Case:
    """One request to send: which field was changed, to what, and the bytes to send."""

    method: str
    field: str
    what: str
    payload: bytes


@dataclass
class Reply:
    code: grpc.StatusCode
    message: str = ""
    reason: str = ""
    fields: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return self.code.name + (f"/{self.reason}" if self.reason else "")


def call(method: Any, payload: bytes, streaming: bool = False) -> Reply:
    """One call with raw bytes; never raises for a status. A server-streaming call
    answers with its first message, or OK when it is still waiting for one after
    a second (a change stream with nothing to send yet)."""
    try:
        if streaming:
            responses = method(payload, timeout=1)
            try:
                next(iter(responses), None)
            except grpc.RpcError as err:
                if err.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined, unused-ignore]
                    raise
            finally:
                responses.cancel()
        else:
            method(payload, timeout=20)
    except grpc.RpcError as err:
        code: grpc.StatusCode = err.code()  # type: ignore[attr-defined, unused-ignore]
        message: str = err.details() or ""  # type: ignore[attr-defined, unused-ignore]
        try:
            reason = error_info(err).reason
        except AssertionError:
            reason = ""  # no status details: refused by gRPC itself (size)
        fields = field_violations(err) if reason else []
        return Reply(code, message, reason, fields)
    return Reply(grpc.StatusCode.OK)


@dataclass
class World:
    """Real things to aim at, made before the attack."""

    stub: Any
    account: str
    other: str
    charged: str  # a closed one with plenty settled (to refund)
    group: str
    token: str  # a real ListEntries next_page_token for (account, "")
    # A real ListReservations next_page_token for (account, "", every state).
    reservations_token: str = ""
    lot: str = ""  # a lot of `account` with plenty left (to void)
    schedule: str = ""  # a grant schedule of `other` (to read and cancel)
    results: Counter[str] = field(default_factory=Counter)


@pytest.fixture(scope="module")
def server(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    url = run_sync(create_database(pg_admin_url, "ledger_fields"))
    log: Path = tmp_path_factory.mktemp("fields") / "server.log"
    s = LedgerServer(url, log)
    try:
        s.start()
        yield url, s
    finally:
        s.stop()
        run_sync(drop_database(pg_admin_url, url))


def make_world(stub: Any) -> World:
    def ok(method: str, request: Message) -> Any:
        return getattr(stub, method)(request, timeout=10)

    accounts = []
    for _ in range(2):
        account = f"acct-{uuid.uuid4().hex[:12]}"
        ok("CreateAccount", pb.CreateAccountRequest(account_id=account))
        for _ in range(3):
            ok(
                "Grant",
                pb.GrantRequest(
                    account_id=account, asset=ASSET, amount=10**15, idempotency_key=new_key()
                ),
            )
        accounts.append(account)
    account, other = accounts
    charged = ok(
        "Charge",
        pb.ChargeRequest(account_id=account, asset=ASSET, amount=10**14, idempotency_key=new_key()),
    ).reservation.reservation_id
    group_req = pb.ReserveGroupRequest(idempotency_key=new_key())
    group_req.legs.add(account_id=account, asset=ASSET, amount=1, leg_key="a")
    group = ok("ReserveGroup", group_req).group.group_id
    token = ok("ListEntries", pb.ListEntriesRequest(account_id=account, page_size=1))
    listed = ok("ListReservations", pb.ListReservationsRequest(account_id=account, page_size=1))
    lot = ok(
        "Grant",
        pb.GrantRequest(account_id=account, asset=ASSET, amount=10**15, idempotency_key=new_key()),
    ).lot.lot_id
    return World(
        stub,
        account,
        other,
        charged,
        group,
        token.next_page_token,
        listed.next_page_token,
        lot=lot,
        schedule=ok(
            "CreateGrantSchedule",
            pb.CreateGrantScheduleRequest(
                account_id=other,
                asset=ASSET,
                amount=1,
                period_unit=pb.GrantSchedule.PERIOD_UNIT_DAY,
                period_count=1,
                idempotency_key=new_key(),
            ),
        ).schedule.schedule_id,
    )


def held(w: World) -> str:
    """A new open reservation (Settle final and Release 0 close theirs)."""
    request = pb.ReserveRequest(
        account_id=w.account, asset=ASSET, amount=10**10, idempotency_key=new_key()
    )
    reply = w.stub.Reserve(request, timeout=10)
    return str(reply.reservation.reservation_id)


def base_request(method: str, w: World) -> Message:
    """A valid request of `method`, with fresh keys and ids so that it would run."""
    target = {"account_id": w.account, "asset": ASSET, "amount": 1}
    if method == "CreateAccount":
        return pb.CreateAccountRequest(account_id=f"new-{uuid.uuid4().hex[:12]}")
    if method in ("Grant", "Reserve", "Charge"):
        request: Message = getattr(pb, f"{method}Request")(idempotency_key=new_key(), **target)
        return request
    if method == "ReserveGroup":
        group = pb.ReserveGroupRequest(idempotency_key=new_key())
        group.legs.add(account_id=w.account, asset=ASSET, amount=1, leg_key="a")
        group.legs.add(account_id=w.other, asset=ASSET, amount=1, leg_key="b")
        return group
    if method == "Settle":
        return pb.SettleRequest(reservation_id=held(w), amount=1, idempotency_key=new_key())
    if method == "Release":
        return pb.ReleaseRequest(reservation_id=held(w), amount=1, idempotency_key=new_key())
    if method == "Refund":
        return pb.RefundRequest(reservation_id=w.charged, amount=1, idempotency_key=new_key())
    if method == "GetReservation":
        return pb.GetReservationRequest(reservation_id=w.charged)
    if method == "GetReservationGroup":
        return pb.GetReservationGroupRequest(group_id=w.group)
    if method == "GetBalance":
        return pb.GetBalanceRequest(account_id=w.account, asset=ASSET, include_lots=True)
    if method in ("SetBalanceAlert", "DeleteBalanceAlert"):
        alert: Message = getattr(pb, f"{method}Request")(account_id=w.account, asset=ASSET)
        if method == "SetBalanceAlert":
            alert.threshold, alert.recovery = 5, 10  # type: ignore[attr-defined]
        return alert
    if method == "GetStatement":
        end = timestamp_pb2.Timestamp()
        end.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
        return pb.GetStatementRequest(
            account_id=w.account,
            asset=ASSET,
            from_time=timestamp_pb2.Timestamp(seconds=1_600_000_000),
            to_time=end,
            page_size=2,
        )
    if method == "ListEntries":
        return pb.ListEntriesRequest(account_id=w.account, page_size=2, page_token=w.token)
    if method == "GetAccount":
        return pb.GetAccountRequest(account_id=w.account)
    if method == "ListReservations":
        return pb.ListReservationsRequest(
            account_id=w.account, page_size=1, page_token=w.reservations_token
        )
    if method == "SetSpendingLimits":
        return pb.SetSpendingLimitsRequest(
            account_id=w.other, asset=ASSET, floor=-1, idempotency_key=new_key()
        )
    if method == "SetMemberCap":
        return pb.SetMemberCapRequest(
            account_id=w.other, asset=ASSET, window=pb.CAP_WINDOW_DAY, cap=10**9,
            idempotency_key=new_key(),
        )  # fmt: skip
    if method == "CreateGrantSchedule":
        return pb.CreateGrantScheduleRequest(
            account_id=w.account,
            asset=ASSET,
            amount=1,
            idempotency_key=new_key(),
            period_unit=pb.GrantSchedule.PERIOD_UNIT_MONTH,
            period_count=1,
        )
    if method == "GetBreakage":
        return pb.GetBreakageRequest(account_id=w.account, asset=ASSET)
    if method == "ListGrantSchedules":
        return pb.ListGrantSchedulesRequest(account_id=w.other, page_size=1)
    if method == "GetGrantSchedule":
        return pb.GetGrantScheduleRequest(schedule_id=w.schedule)
    if method == "UpdateGrantSchedule":
        return pb.UpdateGrantScheduleRequest(
            schedule_id=w.schedule, amount=2, idempotency_key=new_key()
        )
    if method == "CancelGrantSchedule":
        return pb.CancelGrantScheduleRequest(schedule_id=w.schedule, idempotency_key=new_key())
    if method == "VoidGrant":
        return pb.VoidGrantRequest(lot_id=w.lot, amount=1, idempotency_key=new_key())
    if method == "SubmitBatch":
        batch = pb.SubmitBatchRequest()
        batch.commands.add().charge.MergeFromString(base_request("Charge", w).SerializeToString())
        return batch
    # An RPC this file does not know yet: its empty request, every field still attacked.
    cls: type[Message] = getattr(pb, SERVICE.methods_by_name[method].input_type.name)
    return cls()


def int_edges(f: Any) -> list[int]:
    if f.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32):
        return INT32_EDGES
    if f.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return [0, 1, 2**31, 2**32 - 1]
    if f.type in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return [0, 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1]
    return INT64_EDGES


INT_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
}

Mutator = Callable[[Message], None]


def set_to(name: str, value: object) -> Mutator:
    def mutate(m: Message) -> None:
        setattr(m, name, value)

    return mutate


def unset(name: str) -> Mutator:
    def mutate(m: Message) -> None:
        m.ClearField(name)

    return mutate


def map_to(name: str, value: dict[str, str], replace: bool = True) -> Mutator:
    def mutate(m: Message) -> None:
        target = getattr(m, name)
        if replace:
            target.clear()
        target.update(value)

    return mutate


def inside(name: str, mutate: Mutator) -> Mutator:
    def nested(m: Message) -> None:
        mutate(getattr(m, name))

    return nested


def field_mutations(msg: Message, path: str) -> Iterator[tuple[str, str, Mutator]]:
    """(field path, what, mutate-in-place) for every field of `msg`, recursively."""
    f: Any  # protobuf's descriptor classes are two (Python and upb); typed loosely
    for f in msg.DESCRIPTOR.fields:
        name = f"{path}{f.name}"
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            for i, value in enumerate(MAPS):
                yield name, f"map#{i}", map_to(f.name, value)
            for value in ({"k": MARK}, {MARK: "v"}):
                yield name, "not-utf8", map_to(f.name, value, replace=False)
        elif f.is_repeated and f.message_type is not None:
            yield from repeated_mutations(msg, f, name)
        elif f.message_type is not None:
            yield name, "unset", unset(f.name)
            sub = getattr(msg, f.name).__class__()
            for sub_name, what, mutate in field_mutations(sub, f"{name}."):
                yield sub_name, what, inside(f.name, mutate)
        elif f.type in INT_TYPES:
            for number in int_edges(f):
                yield name, str(number), set_to(f.name, number)
        elif f.type == FieldDescriptor.TYPE_BOOL:
            for flag in (True, False):
                yield name, str(flag), set_to(f.name, flag)
        elif f.type == FieldDescriptor.TYPE_ENUM:
            for number in [v.number for v in f.enum_type.values] + [99, -1]:
                yield name, f"enum {number}", set_to(f.name, number)
        elif f.type == FieldDescriptor.TYPE_STRING:
            for i, text in enumerate(STRINGS):
                yield name, f"string#{i}", set_to(f.name, text)
            yield name, "not-utf8", set_to(f.name, MARK)
        if f.has_presence and f.message_type is None:
            yield name, "unset", unset(f.name)


def repeated_mutations(msg: Message, f: Any, name: str) -> Iterator[tuple[str, str, Mutator]]:
    def none(m: Message) -> None:
        del getattr(m, f.name)[:]

    def many(m: Message) -> None:
        items = getattr(m, f.name)
        first = items[0] if len(items) else items.add()
        for i in range(101 - len(items)):
            copy = items.add()
            copy.CopyFrom(first)
            if "leg_key" in copy.DESCRIPTOR.fields_by_name:
                copy.leg_key = f"k{i}"

    yield name, "none", none
    yield name, "101", many
    sub = getattr(msg, f.name).add()  # a template: the mutations apply to element 0
    for sub_name, what, mutate in field_mutations(sub, f"{name}[0]."):

        def in_first(m: Message, mutate: Mutator = mutate) -> None:
            items = getattr(m, f.name)
            mutate(items[0] if len(items) else items.add())

        yield sub_name, what, in_first
    del getattr(msg, f.name)[:]


def token_cases(w: World) -> Iterator[tuple[str, str]]:
    """(what, page_token) forged for ListEntries on (w.account, "")."""
    query = pagetoken.query_hash("ListEntries", (w.account, ""))
    for value in [*INT64_EDGES, 2**63, 2**64, -(2**63) - 1, 10**30, 1.5, True, None, "1"]:
        raw = json.dumps([1, query, value], separators=(",", ":")).encode()
        yield f"forged {value!r}", base64.urlsafe_b64encode(raw).decode().rstrip("=")
        legacy = json.dumps({"b": value, "a": w.account, "s": ""}, separators=(",", ":"))
        yield f"legacy {value!r}", base64.urlsafe_b64encode(legacy.encode()).decode()
    t = w.token
    yield from [
        ("truncated-1", t[:-1]),
        ("truncated-half", t[: len(t) // 2]),
        ("truncated-first", t[1:]),
        ("extended", t + "A"),
        ("padded", t + "=="),
        ("doubled", t + t),
        ("json-nested", base64.urlsafe_b64encode(b"[" * 180).decode()),
        ("json-wrong-version", base64.urlsafe_b64encode(f'[2,"{query}",5]'.encode()).decode()),
        ("json-extra", base64.urlsafe_b64encode(f'[1,"{query}",5,6]'.encode()).decode()),
    ]


def fresh(method: str, w: World, field_path: str, request: Message) -> Message:
    """New idempotency key and account id, unless they are the field under attack."""
    if "idempotency_key" in request.DESCRIPTOR.fields_by_name and field_path != "idempotency_key":
        request.idempotency_key = new_key()  # type: ignore[attr-defined]
    if method == "CreateAccount" and field_path != "account_id":
        request.account_id = f"new-{uuid.uuid4().hex[:12]}"  # type: ignore[attr-defined]
    return request


def cases(w: World) -> Iterator[Case]:
    for method in SERVICE.methods_by_name:
        template = base_request(method, w)
        yield Case(method, "", "valid", template.SerializeToString())
        for path, what, mutate in field_mutations(template, ""):
            request = base_request(method, w)
            mutate(request)
            fresh(method, w, path, request)
            payload = request.SerializeToString()
            if what == "not-utf8":
                if payload.count(MARK.encode()) != 1:
                    continue
                payload = payload.replace(MARK.encode(), NOT_UTF8)
            yield Case(method, path, what, payload)
        if "page_token" in template.DESCRIPTOR.fields_by_name and method == "ListEntries":
            for what, token in token_cases(w):
                request = base_request(method, w)
                request.page_token = token  # type: ignore[attr-defined]
                yield Case(method, "page_token", what, request.SerializeToString())


def named(case: Case, reply: Reply) -> bool:
    """Whether an INVALID_ARGUMENT names the field changed (or the request, when undecodable)."""
    if not reply.fields:
        return False
    if case.what == "not-utf8" or not case.field:
        return True  # not decodable: "request"; a valid request refused: any field
    top = case.field.split(".")[0].split("[")[0]
    tops = {f.split(".")[0].split("[")[0] for f in reply.fields}
    # A token is bound to its query: another account_id, asset (or state) refuses it.
    paged = case.method in ("ListEntries", "ListReservations")
    return top in tops or "request" in tops or (paged and "page_token" in tops)


def check(case: Case, reply: Reply) -> str | None:
    """What is wrong with this reply, or None."""
    oversized = len(case.payload) > MESSAGE_BYTES_MAX
    if reply.code == grpc.StatusCode.RESOURCE_EXHAUSTED and oversized:
        return None
    if reply.code not in ALLOWED:
        return f"{reply.describe()}: {reply.message[:200]}"
    if reply.code == grpc.StatusCode.INVALID_ARGUMENT:
        if reply.reason != "INVALID_ARGUMENT":
            return f"INVALID_ARGUMENT with reason {reply.reason!r}"
        if not named(case, reply):
            return (
                f"INVALID_ARGUMENT naming {reply.fields}, not {case.field}: {reply.message[:200]}"
            )
    if case.field == "page_token" and case.what.startswith(("forged", "legacy")):
        valid = case.what.startswith("forged") and case.what.split()[1] in {
            str(v) for v in INT64_EDGES if v > 0
        }
        if not valid and reply.code != grpc.StatusCode.INVALID_ARGUMENT:
            return f"a forged token answered {reply.describe()}"
    return None


def test_every_field_of_every_rpc_at_its_extremes(server: Any) -> None:
    url, ledger = server
    channel = grpc.insecure_channel(ledger.target, options=CHANNEL_OPTIONS)
    try:
        w = make_world(ledger_pb2_grpc.LedgerServiceStub(channel))
        streaming = {m for m, d in SERVICE.methods_by_name.items() if d.server_streaming}
        raw: dict[str, Any] = {
            m: (channel.unary_stream if m in streaming else channel.unary_unary)(
                f"/{SERVICE.full_name}/{m}", request_serializer=None, response_deserializer=None
            )
            for m in SERVICE.methods_by_name
        }
        all_cases = list(cases(w))

        def send(case: Case) -> tuple[Case, Reply]:
            return case, call(raw[case.method], case.payload, case.method in streaming)

        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(send, all_cases))
    finally:
        channel.close()
    problems = []
    codes: Counter[str] = Counter()
    for case, reply in replies:
        codes[reply.describe()] += 1
        problem = check(case, reply)
        if problem is not None:
            problems.append(f"{case.method} {case.field or '-'} = {case.what}: {problem}")
    print(f"{len(replies)} calls:", dict(codes))
    assert not problems, "\n".join(problems[:60])
    assert codes["OK"] > 50, codes  # the valid parts did run
    assert health_status(ledger.target) == "SERVING"
    code, output = run_verify(url)
    assert code == 0, output
