"""CTDB's socket on real agents: Debian's own `ctdb` tool (CTDB 4.17) talks to pyctdbd
through CTDB_SOCKET and prints what it prints against ctdbd; bad packets close only
their connection; an unknown control gets CTDB's error reply and the connection goes on."""

import os
import shutil
import socket
import stat
import struct
import subprocess
import time

import pytest

from pyctdb.protocol.ctdb import marshal as M
from pyctdb.protocol.ctdb import packet as P
from pyctdb.testing.localcluster import LocalCluster
from pyctdb.testing.netns import NetnsLab

pytestmark = pytest.mark.skipif(shutil.which("ctdb") is None,
                                reason="Debian's ctdb package (the ctdb tool) is missing")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Three agents in network namespaces (pyctdb.testing.netns), six public addresses;
    their CTDB sockets are files, reached from the host."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    lab = NetnsLab(3).create()
    pub = "".join(f"{lab.public_address(j)}/24 eth0\n" for j in range(6))
    c = LocalCluster(3, base_dir=str(tmp_path_factory.mktemp("ctdbsock")), lab=lab,
                     public_addresses=pub)
    try:
        c.start()
        c.wait_healthy(60)
        c.wait_for(lambda: all(ip["pnn"] != -1 for ip in c.call(0, "ip")["ips"]), 30,
                   what="every address hosted")
        yield c
    finally:
        c.stop_all()
        lab.destroy()


def ctdb(c, pnn, *args):
    r = subprocess.run(["ctdb", *args], env=dict(os.environ, CTDB_SOCKET=c.ctdb_socket(pnn)),
                       capture_output=True, text=True, timeout=30)
    return r


def test_ctdb_tool_shows_the_cluster_as_pyctdb_sees_it(cluster):
    c = cluster
    st = c.status(1)
    r = ctdb(c, 1, "pnn")
    assert (r.returncode, r.stdout.strip()) == (0, "1"), r.stderr
    r = ctdb(c, 1, "status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "Number of nodes:3"
    assert lines[1].split() == ["pnn:0", c.address(0), "OK"]
    assert lines[2].split() == ["pnn:1", c.address(1), "OK", "(THIS", "NODE)"]
    assert f"Generation:{st['generation']}" in lines
    assert "Recovery mode:NORMAL (0)" in lines and f"Leader:{st['leader']}" in lines
    r = ctdb(c, 1, "-X", "status")
    assert r.returncode == 0
    assert r.stdout.splitlines()[2] == f"|1|{c.address(1)}|0|0|0|0|0|0|0|0|Y|"
    for cmd in ("status", "nodestatus"):  # pyctdb's machine form: the ctdb tool's, line by line
        ours = c.cli(1, "-X", cmd)
        assert ours.stdout.splitlines()[:4] == ctdb(c, 1, "-X", cmd).stdout.splitlines()[:4]
    assert ctdb(c, 2, "leader").stdout.strip() == str(st["leader"])
    assert ctdb(c, 1, "runstate").stdout.strip() == "RUNNING"
    assert int(ctdb(c, 1, "getpid").stdout) == c.procs[1].pid
    assert "LEADER: YES" in ctdb(c, 1, "getcapabilities").stdout


def test_the_socket_is_root_only(cluster):
    st = os.stat(cluster.ctdb_socket(0))
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


def raw(c, pnn):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(c.ctdb_socket(pnn))
    return s


def recv_packet(s):
    r = P.PacketReader()
    while True:
        data = s.recv(65536)
        if not data:
            return None
        got = r.feed(data)
        if got:
            return got[0]


def control(s, opcode, data=b"", reqid=1, srvid=0):
    s.sendall(P.pack(P.REQ_CONTROL, reqid, P.control_body(opcode, data, srvid=srvid),
                     destnode=P.CURRENT_NODE, srcnode=0))
    h, body = recv_packet(s)
    assert h.operation == P.REPLY_CONTROL and h.reqid == reqid
    return P.parse_reply_control(body)


def test_an_unknown_control_gets_an_error_reply_and_the_connection_goes_on(cluster):
    s = raw(cluster, 0)
    status, data, err = control(s, 200, b"xx", reqid=5)
    assert status == -1 and "control 200 is not supported" in err
    assert control(s, M.GET_PNN, reqid=6)[0] == 0
    assert control(s, M.ECHO_DATA, b"hello", reqid=7)[1] == b"hello"
    s.close()


@pytest.mark.parametrize("junk", [
    b"\x10\0\0\0" + b"\0" * 28,                    # length below the header
    b"\xff\xff\xff\x7f" + b"\0" * 28,              # 2 GiB announced
    P.pack(P.REQ_CONTROL, 1, b"", destnode=0, srcnode=0)[:4] + b"BADM" + b"\0" * 24,
    P.pack(P.REQ_CONTROL, 1, b"\0" * 4, destnode=0, srcnode=0),  # a control too short
])
def test_a_bad_packet_closes_its_connection_only(cluster, junk):
    c = cluster
    s = raw(c, 2)
    s.sendall(junk)
    assert recv_packet(s) is None  # closed
    s.close()
    assert ctdb(c, 2, "pnn").stdout.strip() == "2"
    assert c.running(2)
    assert "Traceback" not in c.log(2)


def test_controls_for_other_nodes_are_answered_there(cluster):
    """`ctdb -n 2 getpid` through node 0's socket: forwarded to node 2 and answered by
    it; `ctdb status` asks every node for its interfaces and prints no error."""
    c = cluster
    r = ctdb(c, 0, "-n", "2", "getpid")
    assert (r.returncode, r.stdout.strip()) == (0, str(c.procs[2].pid)), r.stderr
    r = ctdb(c, 0, "status")
    assert r.returncode == 0 and "failed" not in r.stderr, r.stderr
    s = raw(c, 0)
    s.sendall(P.pack(P.REQ_CONTROL, 9, P.control_body(M.GET_PID), destnode=1, srcnode=0))
    h, body = recv_packet(s)
    assert h.reqid == 9 and P.parse_reply_control(body)[0] == c.procs[1].pid
    s.close()


def test_ctdb_ip_lists_this_node_s_addresses_and_their_holders(cluster):
    c = cluster
    r = ctdb(c, 0, "-X", "ip")
    assert r.returncode == 0, r.stderr
    ours = {ip["address"]: ip["pnn"] for ip in c.call(0, "ip")["ips"]}
    rows = [line.strip("|").split("|") for line in r.stdout.splitlines()[1:]]
    assert len(ours) >= 6 and {row[0]: int(row[1]) for row in rows} == ours


def test_ctdb_moveip_moves_the_address_through_pyctdb_s_leader(cluster):
    """Debian's `ctdb moveip` (RELEASE_IP to the other nodes, then TAKEOVER_IP to the
    target) moves the address, and only one node has it afterwards."""
    c = cluster
    ips = {ip["address"]: ip["pnn"] for ip in c.call(0, "ip")["ips"]}
    addr, holder = sorted(ips.items())[0]
    target = (holder + 1) % 3
    r = ctdb(c, 1, "moveip", addr, str(target))
    assert r.returncode == 0, r.stderr
    c.wait_for(lambda: {ip["address"]: ip["pnn"] for ip in c.call(0, "ip")["ips"]}[addr]
               == target, 10, what=f"{addr} on node {target}")
    on = [p for p in range(3) if addr in c.lab.addresses(p)]
    assert on == [target]
    r = ctdb(c, 1, "moveip", addr, "7")
    assert r.returncode != 0


def test_ctdb_listvars_getvar_setvar_are_pyctdb_s_tunables(cluster):
    c = cluster
    r = ctdb(c, 0, "listvars")
    assert r.returncode == 0, r.stderr
    got = {k.strip(): v for k, v in (line.split(" = ") for line in r.stdout.splitlines())}
    ours = {t["name"]: t["value"] for t in c.call(0, "listvars")["tunables"]}
    assert got == {k: str(int(v)) for k, v in ours.items()}
    name, value = ctdb(c, 0, "getvar", "MonitorInterval").stdout.split(" = ")
    assert (name.strip(), value.strip()) == ("MonitorInterval",
                                             str(int(ours["MonitorInterval"])))
    r = ctdb(c, 2, "setvar", "MonitorInterval", "17")
    assert r.returncode == 0, r.stderr
    assert c.call(2, "getvar", name="MonitorInterval")["value"] == 17
    assert ctdb(c, 0, "getvar", "NoSuchTunable").returncode != 0
    ctdb(c, 2, "setvar", "MonitorInterval", str(int(ours["MonitorInterval"])))


def test_ctdb_setdebug_changes_the_log_level_at_run_time(cluster):
    c = cluster
    assert ctdb(c, 1, "getdebug").stdout.strip() == "INFO"  # (LocalCluster's level)
    assert ctdb(c, 1, "setdebug", "DEBUG").returncode == 0
    assert ctdb(c, 1, "getdebug").stdout.strip() == "DEBUG"
    c.wait_for(lambda: "log level set to DEBUG (was INFO)" in c.log(1), 5, what="logged")
    assert ctdb(c, 1, "setdebug", "INFO").returncode == 0
    assert ctdb(c, 1, "getdebug").stdout.strip() == "INFO"


def test_pyctdb_getdebug_setdebug_are_the_same_level(cluster):
    c = cluster
    assert c.cli_ok(0, "getdebug").strip() == "INFO"
    c.cli_ok(0, "setdebug", "notice")
    assert ctdb(c, 0, "getdebug").stdout.strip() == "NOTICE"
    r = c.cli(0, "setdebug", "LOUD")
    assert r.returncode != 0 and "log level must be one of" in r.stderr
    c.cli_ok(0, "setdebug", "INFO")


def test_ctdb_disable_enable_stop_continue_ipreallocate(cluster):
    """The tool's admin commands: the control, its wait for the flag, then its takeover
    run (a CTDB_SRVID_TAKEOVER_RUN message answered with the leader's PNN)."""
    c = cluster
    for cmd, flag in (("disable", "DISABLED"), ("stop", "STOPPED")):
        r = ctdb(c, 2, cmd)
        assert r.returncode == 0, (cmd, r.stdout, r.stderr, c.log(2)[-2000:])
        assert flag in c.status(0)["nodes"][2]["flag_names"]
        assert all(ip["pnn"] != 2 for ip in c.call(0, "ip")["ips"])
        r = ctdb(c, 2, {"disable": "enable", "stop": "continue"}[cmd])
        assert r.returncode == 0, r.stderr
        c.wait_for(lambda: c.status(0)["nodes"][2]["flags"] == 0, 20, what="node 2 OK")
    r = ctdb(c, 0, "ipreallocate")
    assert r.returncode == 0, r.stderr


def test_ctdb_getreclock_ban_unban_process_exists(cluster):
    c = cluster
    lock = c.status(0)["cluster_lock"]["lock"]
    assert ctdb(c, 0, "getreclock").stdout.strip() == lock
    r = ctdb(c, 2, "ban", "30")
    assert r.returncode == 0, r.stderr
    assert "BANNED" in c.status(0)["nodes"][2]["flag_names"]
    r = ctdb(c, 2, "unban")
    assert r.returncode == 0, (r.stdout, r.stderr, c.log(2)[-1500:])
    c.wait_for(lambda: c.status(0)["nodes"][2]["flags"] == 0, 20, what="node 2 OK")
    # as ctdbd: a process "exists" for the node when it is a client of its socket
    s = raw(c, 0)
    control(s, M.GET_PNN)  # (connected, and served)
    r = ctdb(c, 0, "process-exists", str(os.getpid()))
    assert r.returncode == 0 and "exists" in r.stdout, (r.stdout, r.stderr)
    r = ctdb(c, 0, "process-exists", str(c.procs[0].pid))  # (alive, but no client)
    assert r.returncode == 1 and "does not exist" in r.stdout
    s.close()


def test_check_pid_srvid_says_whether_that_client_registered_that_srvid(cluster):
    c = cluster
    a, b = raw(c, 1), raw(c, 1)
    a.sendall(P.pack(P.REQ_CONTROL, 1, P.control_body(M.REGISTER_SRVID, srvid=0x1234),
                     destnode=P.CURRENT_NODE, srcnode=1))
    h, body = recv_packet(a)
    assert P.parse_reply_control(body)[0] == 0
    pid = os.getpid()
    assert control(b, M.CHECK_PID_SRVID, struct.pack("<iQ", pid, 0x1234))[0] == 0
    assert control(b, M.CHECK_PID_SRVID, struct.pack("<iQ", pid, 0x9999))[0] == -1
    assert control(b, M.CHECK_PID_SRVID, struct.pack("<iQ", c.procs[1].pid, 0x1234))[0] == -1
    a.close()
    time.sleep(0.2)
    assert control(b, M.CHECK_PID_SRVID, struct.pack("<iQ", pid, 0x1234))[0] == -1
    b.close()


def test_ctdb_reloadips_reads_every_node_s_file_again(cluster):
    """ctdb reloadips: takeover runs disabled on the leader (CTDB_SRVID_DISABLE_TAKEOVER_RUNS
    to each node, answered), RELOAD_PUBLIC_IPS on each node, runs enabled again, a
    takeover run: an address added to every node's file is hosted afterwards."""
    c, lab = cluster, cluster.lab
    new = lab.public_address(6)
    for p in range(3):
        path = os.path.join(c.config_dir(p), "public_addresses")
        with open(path, "a") as f:
            f.write(f"{new}/24 eth0\n")
    r = ctdb(c, 0, "reloadips")
    assert r.returncode == 0, (r.stdout, r.stderr)
    c.wait_for(lambda: sum(new in lab.addresses(p) for p in range(3)) == 1, 20,
               what=f"{new} hosted on one node")
    leader = c.status(0)["leader"]
    log = c.log(leader)
    assert "takeover runs disabled for" in log and "takeover runs enabled again" in log


def test_ctdb_getdbmap_getdbstatus_getdbseqnum_show_pyctdb_s_databases(cluster):
    c = cluster
    c.call(0, "attach", db_name="vol_ctdbsock.tdb")
    c.call(0, "attach", db_name="per_ctdbsock.tdb", persistent=True)
    c.call(0, "pstore", db_name="per_ctdbsock.tdb", key="azE=", value="djE=")
    ours = {d["name"]: d for d in c.call(1, "getdbmap")["dbs"]}
    r = ctdb(c, 1, "getdbmap")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"Number of databases:{len(ours)}"
    for name, d in ours.items():
        line = next(x for x in lines if f"name:{name} " in x)
        assert line.startswith(f"dbid:0x{d['db_id']:08x} name:{name} path:{d['path']}")
        assert ("PERSISTENT" in line) == d["persistent"]
    r = ctdb(c, 1, "getdbseqnum", "per_ctdbsock.tdb")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.strip(), 0) == ours["per_ctdbsock.tdb"]["seqnum"] >= 1
    r = ctdb(c, 1, "getdbstatus", "vol_ctdbsock.tdb")
    assert r.returncode == 0 and "HEALTH: OK" in r.stdout, (r.stdout, r.stderr)


def test_a_client_registered_for_the_leader_hears_it_at_once_and_every_second(cluster):
    c = cluster
    s = raw(c, 1)
    s.sendall(P.pack(P.REQ_CONTROL, 3, P.control_body(M.REGISTER_SRVID, srvid=M.SRVID_LEADER),
                     destnode=P.CURRENT_NODE, srcnode=1))
    r, got, t0 = P.PacketReader(), [], time.monotonic()
    while len(got) < 4 and time.monotonic() - t0 < 8:
        got += [(time.monotonic(), h, b) for h, b in r.feed(s.recv(65536))]
    s.close()
    assert got[0][1].operation == P.REPLY_CONTROL and got[0][1].reqid == 3
    msgs = [(t, P.parse_message(b)) for t, h, b in got[1:] if h.operation == P.REQ_MESSAGE]
    assert len(msgs) == 3 and {m.srvid for _, m in msgs} == {M.SRVID_LEADER}
    assert {M.parse_u32(m.data) for _, m in msgs} == {c.status(1)["leader"]}
    assert msgs[2][0] - msgs[1][0] > 0.5  # (the periodic broadcast, every second)


def test_ctdb_ip_all_and_ifaces_as_ctdb_prints_them(cluster):
    c = cluster
    r = ctdb(c, 1, "-X", "ip", "all")
    assert r.returncode == 0, r.stderr
    rows = dict(line.strip("|").split("|") for line in r.stdout.splitlines()[1:])
    ours = {ip["address"]: str(ip["pnn"]) for ip in c.call(1, "ip", all=True)["ips"]}
    assert rows == ours
    r = ctdb(c, 1, "-X", "ifaces")
    assert r.returncode == 0, r.stderr
    hosted = sum(1 for p in ours.values() if p == "1")
    assert r.stdout.splitlines()[1:] == [f"|eth0|1|{hosted}|"]


def next_message(s, srvid, timeout=15):
    """The data of the next REQ_MESSAGE to ``srvid`` on ``s`` (others skipped)."""
    r = P.PacketReader()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        data = s.recv(65536)
        assert data, "connection closed"
        for h, body in r.feed(data):
            if h.operation == P.REQ_MESSAGE:
                m = P.parse_message(body)
                if m.srvid == srvid:
                    return m.data
    raise AssertionError(f"no message to srvid 0x{srvid:x} within {timeout}s")


def test_a_released_address_is_told_to_clients_registered_for_release_ip(cluster):
    """smbd registers CTDB_SRVID_RELEASE_IP to end the sessions on an address that
    moves away; the node that releases it sends the address to that srvid."""
    c = cluster
    ip = next(i for i in c.call(0, "ip")["ips"] if i["pnn"] == 1)["address"]
    s = raw(c, 1)
    assert control(s, M.REGISTER_SRVID, srvid=M.SRVID_RELEASE_IP)[0] == 0
    r = ctdb(c, 0, "moveip", ip, "2")
    assert r.returncode == 0, r.stderr
    assert next_message(s, M.SRVID_RELEASE_IP) == ip.encode() + b"\0"
    s.close()
    c.wait_for(lambda: all(i["pnn"] != -1 for i in c.call(0, "ip")["ips"]), 30)


def test_notify_data_is_sent_when_its_client_goes(cluster):
    """REGISTER_NOTIFY: when the registering client's connection closes, its data goes
    to the srvid on its node (DEREGISTER_NOTIFY takes it back)."""
    c = cluster
    srvid = 0xAB00000000000001
    watcher, going, kept = raw(c, 2), raw(c, 2), raw(c, 2)
    assert control(watcher, M.REGISTER_SRVID, srvid=srvid)[0] == 0
    note = struct.pack("<QI", srvid, 3) + b"bye"
    assert control(going, M.REGISTER_NOTIFY, note)[0] == 0
    assert control(kept, M.REGISTER_NOTIFY, struct.pack("<QI", srvid, 4) + b"kept")[0] == 0
    assert control(kept, M.DEREGISTER_NOTIFY, struct.pack("<Q", srvid))[0] == 0
    status, _d, err = control(kept, M.DEREGISTER_NOTIFY, b"\1\2")
    assert status == -1 and "srvid of 2 bytes, not 8" in err
    status, _d, err = control(kept, M.DEREGISTER_NOTIFY, struct.pack("<Q", srvid))
    assert status == -1 and "no notification registered" in err  # (taken back already)
    kept.close()
    going.close()
    assert next_message(watcher, srvid) == b"bye"
    status, _d, err = control(raw(c, 2), M.REGISTER_NOTIFY, b"short")
    assert status == -1 and "notify data of 5 bytes" in err
    watcher.close()


def test_tcp_client_is_accepted(cluster):
    s = raw(cluster, 0)
    assert control(s, M.TCP_CLIENT, M.sock_addr("10.0.0.1", 445) + M.sock_addr(
        "10.0.0.2", 50000))[0] == 0
    s.close()


def test_bad_calls_get_an_error_reply_or_close_only_their_connection(cluster):
    """REQ_CALL for a database that is not attached, or with an unknown call function:
    REPLY_ERROR naming it, and the connection goes on; a call too short to read closes
    the connection; the agent serves the next client."""
    c = cluster
    s = raw(c, 0)
    s.sendall(P.pack(P.REQ_CALL, 9, P.call_body(0x12345678, b"key"), destnode=P.CURRENT_NODE,
                     srcnode=0))
    h, body = recv_packet(s)
    assert (h.operation, h.reqid) == (P.REPLY_ERROR, 9)
    assert b"no database 0x12345678" in body
    s.sendall(P.pack(P.REQ_CALL, 10, P.call_body(0x12345678, b"key", callid=7),
                     destnode=P.CURRENT_NODE, srcnode=0))
    h, body = recv_packet(s)
    assert h.operation == P.REPLY_ERROR and b"call function 0x00000007" in body
    assert control(s, M.GET_PNN, reqid=11)[0] == 0
    s.sendall(P.pack(P.REQ_CALL, 12, b"\0" * 10, destnode=P.CURRENT_NODE, srcnode=0))
    assert recv_packet(s) is None  # closed
    assert control(raw(c, 0), M.GET_PNN)[0] == 0
    assert "Traceback" not in c.log(0)


def test_attach_through_the_socket_makes_a_tdb_file_and_refuses_an_lmdb_database(cluster):
    """DB_ATTACH makes a TDB file (its path, as GETDBPATH answers, on every node); a
    database pyctdb's own clients attached (LMDB: smbd could not open it) is refused
    by name, and the connection goes on."""
    c = cluster
    s = raw(c, 2)
    status, data, err = control(s, M.DB_ATTACH, b"samba_like.tdb\0")
    assert status == 0, err
    db_id = M.parse_u32(data)
    status, path, _ = control(s, M.GETDBPATH, M.u32(db_id), reqid=2)
    assert status == 0 and path.rstrip(b"\0").decode() == os.path.join(
        c.node_dir(2), "db", "volatile", "samba_like.tdb.2")
    assert os.path.exists(path.rstrip(b"\0").decode())
    c.wait_for(lambda: os.path.exists(os.path.join(c.node_dir(0), "db", "volatile",
                                                   "samba_like.tdb.0")), 10)
    c.call(0, "attach", db_name="lmdb_only.tdb")
    status, _d, err = control(s, M.DB_ATTACH, b"lmdb_only.tdb\0", reqid=3)
    assert status == -1 and "attached as a pyctdb (LMDB) database" in err, err
    assert control(s, M.GET_PNN, reqid=4)[0] == 2  # (the PNN, in the status)
    s.close()


def test_ctdb_addtickle_gettickles_deltickle_as_ctdb(cluster):
    """The tickle commands of Debian's ctdb tool (CTDB's functions call them for NFS:
    update_tickles): a connection registered with addtickle is listed by gettickles,
    in CTDB's two forms and filtered by port, and is gone after deltickle."""
    c = cluster
    addr = next(ip["address"] for ip in c.call(0, "ip", all=True)["ips"] if ip["pnn"] == 0)
    client = f"{c.lab.client_address}:40123"
    r = ctdb(c, 0, "addtickle", client, f"{addr}:2049")
    assert r.returncode == 0, r.stderr
    r = ctdb(c, 0, "gettickles", addr)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"Connections for IP: {addr}"
    assert r.stdout.splitlines()[1:] == ["Num connections: 1",
                                         f"SRC: {client}   DST: {addr}:2049"]
    r = ctdb(c, 0, "-X", "gettickles", addr, "2049")
    assert r.returncode == 0, r.stderr
    assert f"|{c.lab.client_address}|40123|{addr}|2049|" in r.stdout.splitlines()
    r = ctdb(c, 0, "-X", "gettickles", addr, "445")  # (another port: not listed)
    assert f"|{c.lab.client_address}|40123|" not in r.stdout
    r = ctdb(c, 0, "deltickle", client, f"{addr}:2049")
    assert r.returncode == 0, r.stderr
    assert f"{client}" not in ctdb(c, 0, "gettickles", addr).stdout
    # an address that is not public: refused, as ctdbd refuses it
    r = ctdb(c, 0, "gettickles", "192.0.2.77")
    assert r.returncode != 0
    r = ctdb(c, 0, "addtickle", client, "192.0.2.77:2049")
    assert r.returncode != 0


def test_ctdb_gratarp_announces_from_the_interface(cluster):
    c = cluster
    addr = next(ip["address"] for ip in c.call(0, "ip", all=True)["ips"] if ip["pnn"] == 0)
    r = ctdb(c, 0, "gratarp", addr, "eth0")
    assert r.returncode == 0, r.stderr
    r = ctdb(c, 0, "gratarp", addr, "nosuch0")
    assert r.returncode != 0


def test_ctdb_setifacelink_is_shown_by_ifaces(cluster):
    """10.interface's monitor calls `ctdb setifacelink IFACE up|down` with what it
    found; `ctdb ifaces` shows it (hosting follows the kernel's link state)."""
    c = cluster
    try:
        r = ctdb(c, 2, "setifacelink", "eth0", "down")
        assert r.returncode == 0, r.stderr
        rows = ctdb(c, 2, "-X", "ifaces").stdout.splitlines()[1:]
        assert rows and rows[0].startswith("|eth0|0|"), rows
        assert ctdb(c, 2, "setifacelink", "nosuch0", "up").returncode != 0
    finally:
        assert ctdb(c, 2, "setifacelink", "eth0", "up").returncode == 0
    assert ctdb(c, 2, "-X", "ifaces").stdout.splitlines()[1].startswith("|eth0|1|")
