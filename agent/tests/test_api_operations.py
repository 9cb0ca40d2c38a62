"""The client front-end seam (server/api): a failed control mapped to an API error by its
code (and by the REPLY text of peers before issue 10); the JSON front end answering an
operation's error by its type and code; messages written in each connection's form."""

import asyncio
import json
from types import SimpleNamespace

import pytest

from pyctdb import API_VERSION
from pyctdb.errors import ApiError, ControlError
from pyctdb.server.api.connection import ApiConnection
from pyctdb.server.api.controls import NodeControls
from pyctdb.server.api.frontend import ClientConnection
from pyctdb.server.api.operations import NodeOperations
from pyctdb.server.api.server import ApiServer
from pyctdb.server.events import EventError
from pyctdb.server.messaging import Messaging


def _cluster(raise_exc=None):
    async def control(pnn, op, args=None, timeout=5.0):
        raise raise_exc
    return SimpleNamespace(pnn=0, control=control, control_handlers={}, frame_handlers={},
                           peers={}, nodes=[])


@pytest.mark.parametrize("exc,pnn,code,message", [
    # codes as the REPLY carries them since issue 10
    (ControlError(2, "bad value", code="EINVAL"), 2, "EINVAL", "bad value"),
    (ControlError(2, "missing argument 'x'", code="EINVAL"), 2, "EINVAL",
     "missing argument 'x'"),
    (ControlError(2, "node 2 disconnected", code="ENOTCONN"), 2, "ENOTCONN",
     "node 2 is not connected"),
    (ControlError(0, "node 0 is not connected", code="ENOTCONN"), 0, "EIO",
     "node 0: node 0 is not connected"),
    (ControlError(2, "control x timed out after 1s", code="ETIMEDOUT"), 2, "EIO",
     "node 2: control x timed out after 1s"),
    (ControlError(2, "RuntimeError: boom", code="EIO"), 2, "EIO",
     "node 2: RuntimeError: boom"),
    # without a code (EIO), the text says nothing
    (ControlError(2, "ValueError: bad value"), 2, "EIO", "node 2: ValueError: bad value"),
    (ControlError(2, "node 2 is not connected"), 2, "EIO", "node 2: node 2 is not connected"),
    # this node's handler, called directly
    (ValueError("bad value"), 0, "EINVAL", "bad value"),
])
def test_a_failed_control_is_mapped_by_its_code(exc, pnn, code, message):
    controls = NodeControls(_cluster(exc))
    with pytest.raises(ApiError) as info:
        asyncio.run(controls.on_node(pnn, "admin", {}))
    assert (info.value.code, info.value.message) == (code, message)


def _answer(server, command, **args):
    line = json.dumps({"version": API_VERSION, "id": 1, "command": command,
                       "args": args}).encode()
    answer = server.dispatch(line, ApiConnection(None))
    if not isinstance(answer, bytes):
        answer = asyncio.run(answer)
    return json.loads(answer)


class _Runner:
    last = {}

    def scripts(self):
        return []

    def set_enabled(self, name, enabled):
        raise EventError(f"no event script {name!r} in /x", "ENOENT")

    async def run(self, event, *args, timeout=None):
        raise EventError(f"unknown event {event!r}")


def test_the_json_front_end_answers_errors_by_their_code():
    server = ApiServer("/nonexistent", NodeOperations(_cluster(), None, events=_Runner()))
    res = _answer(server, "event_script", action="enable", script="10.x")
    assert res["error"] == {"code": "ENOENT", "message": "no event script '10.x' in /x"}
    res = _answer(server, "event_run", event="nosuch")
    assert res["error"] == {"code": "EINVAL", "message": "unknown event 'nosuch'"}
    res = _answer(server, "message_status")
    assert res["error"] == {"code": "EIO", "message": "messaging is not running in this agent"}
    res = _answer(server, "readkey", db_name="a.tdb", key="eA==")
    assert res["error"]["code"] == "EIO"
    res = _answer(server, "getvar")
    assert res["error"]["code"] == "EINVAL" and "bad arguments for getvar" in \
        res["error"]["message"]


class _Transport:
    def __init__(self):
        self.written = []

    def is_closing(self):
        return False

    def get_write_buffer_size(self):
        return 0

    def write(self, data):
        self.written.append(data)


class _OtherConnection(ClientConnection):
    __slots__ = ()

    @staticmethod
    def encode_message(srvid, src, data, dropped=0) -> bytes:
        return b"OTHER %d %d %s %d\n" % (srvid, src, data.encode(), dropped)


def test_messages_are_written_in_each_connections_form():
    async def main():
        cluster = SimpleNamespace(pnn=0, frame_handlers={})
        m = Messaging(cluster)
        json_conn, other_conn = ApiConnection(_Transport()), _OtherConnection(_Transport())
        assert m.register(json_conn, 7) and m.register(other_conn, 7)
        m.deliver(1, 7, "aGk=")
        await asyncio.sleep(0.01)  # written together at the end of the loop's pass
        return json_conn.transport.written, other_conn.transport.written
    json_written, other_written = asyncio.run(main())
    assert json_written == [b'{"message":{"srvid":7,"src":1,"data":"aGk="}}\n']
    assert other_written == [b"OTHER 7 1 aGk= 0\n"]
