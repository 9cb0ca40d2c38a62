"""The pyctdb.cluster.node role without containers: three "nodes" that are this machine
(connection local), each with its own directories and a 127.0.X.Y address.

Runs the role's nodes, install and config task files for real (controller-side wheel
build, virtualenv, pip --no-index, pyctdbd --check-config, templates), checks what they
wrote and that a second run changes nothing, then starts the installed agents on the
rendered configuration and waits with ctdb_status until the three are healthy. The
systemd part (service.yml) needs real systemd nodes: the Molecule scenario covers it."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
import yaml

IGNORE = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "tests",
                                ".pytest_cache")

PLAY = """
- hosts: pyctdb
  gather_facts: true
  tasks:
    - ansible.builtin.include_role: {name: pyctdb.cluster.node, tasks_from: nodes, public: true}
    - ansible.builtin.include_role: {name: pyctdb.cluster.node, tasks_from: transport_key}
    - ansible.builtin.include_role: {name: pyctdb.cluster.node, tasks_from: install}
    - ansible.builtin.include_role: {name: pyctdb.cluster.node, tasks_from: config}
    - name: Render the systemd unit where the test can read it
      ansible.builtin.template:
        src: "{{ collection_root }}/roles/node/templates/pyctdbd.service.j2"
        dest: "{{ pyctdb_base }}/pyctdbd.service"
        mode: "0644"
"""

CHECK = """
- hosts: pyctdb
  gather_facts: false
  tasks:
    - pyctdb.cluster.ctdb_status:
        socket: "{{ pyctdb_base }}/pyctdbd.socket"
        config_dir: "{{ pyctdb_config_dir }}"
        wait_for: healthy
        expected_nodes: 3
        timeout: 60
      register: st
    - ansible.builtin.debug:
        msg: "RESULT {{ inventory_hostname }} {{ st.pnn }} {{ st.leader }} {{ st.ok_nodes }}"
    - ansible.builtin.debug:
        msg: "AUTH {{ inventory_hostname }} {{ st.transport_authenticated }}"
"""


def _inventory(base, subnet, port, agent_src, helpers, host_extra=None):
    hosts = {}
    for i in (1, 2, 3):
        hosts["node%d" % i] = {"pyctdb_node_address": "127.0.%d.%d" % (subnet, i),
                               "pyctdb_base": os.path.join(base, "node%d" % i)}
        hosts["node%d" % i].update((host_extra or {}).get("node%d" % i, {}))
    return {"pyctdb": {"hosts": hosts, "vars": {
        "ansible_connection": "local",
        "ansible_python_interpreter": os.sys.executable,
        "collection_root": helpers.REPO,
        "pyctdb_config_dir": "{{ pyctdb_base }}/etc",
        "pyctdb_venv": "{{ pyctdb_base }}/venv",
        "pyctdb_wheel_dir": "{{ pyctdb_base }}/wheels",
        "pyctdb_wheel_cache": os.path.join(base, "cache"),
        "pyctdb_agent_source": agent_src,
        "pyctdb_link_commands": False,
        "pyctdb_service_state": "stopped",
        "pyctdb_cluster_lock": os.path.join(base, "shared", "cluster.lock"),
        "pyctdb_log_location": "file:{{ pyctdb_base }}/pyctdb.log",
        "pyctdb_database_directory": "{{ pyctdb_base }}/db",
        "pyctdb_log_level": "INFO",
        "pyctdb_port": port,
        "pyctdb_leader_timeout": 3,
        "pyctdb_tunables": {"KeepaliveInterval": 1},
        "pyctdb_public_addresses": [
            {"address": "192.0.2.10", "prefix": 24, "interfaces": ["eth0", "eth1"]},
            {"address": "192.0.2.11", "prefix": 24, "interfaces": ["eth0"]}],
    }}}


def _playbook(helpers, base, name, text, inventory, *extra):
    play = os.path.join(base, name)
    with open(play, "w") as f:
        f.write(text)
    inv = os.path.join(base, "inventory.yml")
    with open(inv, "w") as f:
        yaml.safe_dump(inventory, f)
    return subprocess.run([helpers.ansible_bin("ansible-playbook"), "-i", inv, play] + list(extra),
                          cwd=helpers.REPO, env=helpers.ansible_env(), capture_output=True,
                          text=True, timeout=600)


def _recap(out):
    return {m.group(1): {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
            for m in re.finditer(r"^(node\d)\s+:\s+(.*)$", out, re.M)}


@pytest.fixture
def workdir(helpers):
    base = tempfile.mkdtemp(prefix="pyctdb-role-", dir="/tmp")
    agent_src = os.path.join(base, "agent-src")
    # A snapshot, so that edits to agent/ while the test runs cannot change the wheel.
    shutil.copytree(helpers.AGENT, agent_src, ignore=IGNORE)
    os.makedirs(os.path.join(base, "shared"))
    yield base, agent_src
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the role writes root-owned files")
def test_role_installs_configures_and_is_idempotent(workdir, helpers):
    base, agent_src = workdir
    subnet, port = random.randint(20, 250), random.randint(20000, 60000)
    inv = _inventory(base, subnet, port, agent_src, helpers)

    p = _playbook(helpers, base, "play.yml", PLAY, inv)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    addrs = ["127.0.%d.%d" % (subnet, i) for i in (1, 2, 3)]
    for i in (1, 2, 3):
        node = os.path.join(base, "node%d" % i)
        etc = os.path.join(node, "etc")
        with open(os.path.join(etc, "nodes")) as f:
            assert f.read() == "".join(a + "\n" for a in addrs)
        with open(os.path.join(etc, "pyctdb.conf")) as f:
            conf = f.read()
        assert conf.startswith("#")
        assert "Ansible managed" in conf
        assert "node address = 127.0.%d.%d" % (subnet, i) in conf
        assert "cluster lock = %s/shared/cluster.lock" % base in conf
        assert "port = %d" % port in conf and "leader timeout = 3" in conf
        assert "location = file:%s/pyctdb.log" % node in conf
        assert "log level = INFO" in conf and "disabled = false" in conf
        assert "persistent database directory = %s/db/persistent" % node in conf
        with open(os.path.join(etc, "public_addresses")) as f:
            lines = [ln for ln in f.read().splitlines() if not ln.startswith("#")]
        assert lines == ["192.0.2.10/24 eth0,eth1", "192.0.2.11/24 eth0"]
        with open(os.path.join(etc, "pyctdb.tunables")) as f:
            assert "KeepaliveInterval=1" in f.read().splitlines()
        assert os.listdir(os.path.join(node, "wheels")) == [
            w for w in os.listdir(os.path.join(node, "wheels")) if w.endswith(".whl")]
        assert os.access(os.path.join(node, "venv", "bin", "pyctdbd"), os.X_OK)
        assert os.path.exists(os.path.join(node, "venv", ".pyctdb-wheels.sha256"))
        with open(os.path.join(node, "pyctdbd.service")) as f:
            unit = f.read()
        for line in ("Type=notify", "NotifyAccess=main", "RuntimeDirectory=pyctdb",
                     "StateDirectory=pyctdb", "TimeoutStartSec=120", "TimeoutStopSec=30",
                     "ExecStartPre=%s/venv/bin/pyctdbd --check-config --config-dir %s"
                     % (node, etc),
                     "ExecStart=%s/venv/bin/pyctdbd --config-dir %s" % (node, etc),
                     "WantedBy=multi-user.target"):
            assert line in unit.splitlines(), line
        assert "Restart=" not in unit
        check = subprocess.run([os.path.join(node, "venv", "bin", "pyctdbd"),
                                "--check-config", "--config-dir", etc],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        assert "this node is PNN %d" % (i - 1) in check.stdout

    # A second run changes nothing.
    p = _playbook(helpers, base, "play.yml", PLAY, inv)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    recap = _recap(p.stdout)
    assert set(recap) == {"node1", "node2", "node3"}
    changed = [ln for ln in p.stdout.splitlines() if ln.startswith("changed:")]
    assert all(r["changed"] == 0 for r in recap.values()), "\n".join(changed)

    # An invalid configuration is refused by pyctdbd --check-config before it is installed.
    with open(os.path.join(base, "node1", "etc", "pyctdb.tunables")) as f:
        before = f.read()
    p = _playbook(helpers, base, "play.yml", PLAY, inv, "-e",
                  json.dumps({"pyctdb_tunables": {"NoSuchTunable": 1}}))
    assert p.returncode != 0
    assert "pyctdbd --check-config refused the configuration" in p.stdout
    assert "%s/node1/etc/pyctdb.tunables" % base in p.stdout  # the real path, not scratch
    assert "NoSuchTunable" in p.stdout
    with open(os.path.join(base, "node1", "etc", "pyctdb.tunables")) as f:
        assert f.read() == before

    # The installed agents form a healthy cluster on the rendered configuration.
    procs = []
    try:
        for i in (1, 2, 3):
            node = os.path.join(base, "node%d" % i)
            env = dict(os.environ)
            env.pop("PYTHONPATH", None)
            env.pop("NOTIFY_SOCKET", None)
            procs.append(subprocess.Popen(
                [os.path.join(node, "venv", "bin", "pyctdbd"), "--config-dir",
                 os.path.join(node, "etc"), "--socket", os.path.join(node, "pyctdbd.socket")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                start_new_session=True))
        p = _playbook(helpers, base, "check.yml", CHECK, inv)
        assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
        results = re.findall(r"RESULT (node\d) (\d+) (\d+) (\d+)", p.stdout)
        assert sorted((h, int(pnn), int(ok)) for h, pnn, _l, ok in results) == [
            ("node1", 0, 3), ("node2", 1, 3), ("node3", 2, 3)]
        assert len({leader for _h, _p, leader, _o in results}) == 1
        # The role wrote a cluster key: the agents run an authenticated transport.
        auth = dict(re.findall(r"AUTH (node\d) (\w+)", p.stdout))
        assert auth == {"node1": "True", "node2": "True", "node3": "True"}, auth
        assert all(r["changed"] == 0 for r in _recap(p.stdout).values())
    finally:
        for pr in procs:
            pr.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for pr in procs:
            try:
                pr.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pr.kill()
                pr.wait()


def test_role_refuses_inconsistent_nodes_lists(workdir, helpers):
    base, agent_src = workdir
    inv = _inventory(base, 77, 24379, agent_src, helpers, host_extra={
        "node2": {"pyctdb_nodes": ["127.0.77.1", "127.0.77.2"]}})
    p = _playbook(helpers, base, "play.yml", PLAY, inv)
    assert p.returncode != 0
    out = p.stdout.replace("\n", " ")
    assert "the hosts do not agree on the nodes list" in out
    assert "node2: 127.0.77.1,127.0.77.2" in out
    assert "node1: 127.0.77.1,127.0.77.2,127.0.77.3" in out
    assert "Nothing was changed" in out
    # Refused before anything was touched: no node directory was created.
    assert not any(os.path.exists(os.path.join(base, "node%d" % i)) for i in (1, 2, 3))


def test_role_refuses_duplicate_addresses(workdir, helpers):
    base, agent_src = workdir
    inv = _inventory(base, 78, 24379, agent_src, helpers, host_extra={
        "node3": {"pyctdb_node_address": "127.0.78.1"}})
    p = _playbook(helpers, base, "play.yml", PLAY, inv)
    assert p.returncode != 0
    assert "duplicate addresses: 127.0.78.1,127.0.78.2,127.0.78.1" in p.stdout
    assert not any(os.path.exists(os.path.join(base, "node%d" % i)) for i in (1, 2, 3))


def test_role_pnn_pinning_and_deleted_nodes(workdir, helpers):
    """pyctdb_pnn pins hosts to lines; gaps become deleted (#) lines. Only the nodes step
    runs (the list is shown by the assert's success message)."""
    base, agent_src = workdir
    inv = _inventory(base, 79, 24379, agent_src, helpers, host_extra={
        "node1": {"pyctdb_pnn": 3}, "node3": {"pyctdb_pnn": 0}})
    play = ("- hosts: pyctdb\n  gather_facts: false\n  tasks:\n"
            "    - ansible.builtin.include_role: {name: pyctdb.cluster.node, tasks_from: nodes}\n"
            "    - ansible.builtin.debug: {msg: \"NODES {{ pyctdb_node_nodes | join(',') }}\"}\n")
    p = _playbook(helpers, base, "nodes.yml", play, inv)
    assert p.returncode == 0, p.stdout[-4000:]
    assert p.stdout.count("NODES 127.0.79.3,127.0.79.2,#,127.0.79.1") == 3


def test_role_refuses_missing_cluster_lock_directory(workdir, helpers):
    base, agent_src = workdir
    inv = _inventory(base, 80, 24379, agent_src, helpers)
    inv["pyctdb"]["vars"]["pyctdb_cluster_lock"] = os.path.join(base, "not-mounted", "lock")
    p = _playbook(helpers, base, "play.yml", PLAY, inv)
    assert p.returncode != 0
    out = p.stdout.replace("\n", " ")
    assert "the directory of the cluster lock %s/not-mounted/lock does not exist" % base in out
    assert not any(os.path.exists(os.path.join(base, "node%d" % i)) for i in (1, 2, 3))


RENDER = """
- hosts: pyctdb
  gather_facts: false
  tasks:
    - ansible.builtin.include_role: {name: pyctdb.cluster.node, tasks_from: nodes, public: true}
    - name: Render the tunables and public addresses where the test can read them
      ansible.builtin.template:
        src: "{{ collection_root }}/roles/node/templates/{{ item }}.j2"
        dest: "{{ pyctdb_base }}.{{ item }}"
        mode: "0644"
      loop: [pyctdb.tunables, public_addresses]
"""


def _rendered(base, name):
    with open(os.path.join(base, "node1.%s" % name)) as f:
        return [ln for ln in f.read().splitlines() if ln and not ln.startswith("#")]


def test_role_allocation_variables_and_default_interfaces(workdir, helpers):
    """pyctdb_ip_alloc_algorithm / pyctdb_no_ip_failback / pyctdb_no_ip_takeover become
    CTDB's tunables (pyctdb_tunables wins), and addresses without interfaces get
    pyctdb_public_interfaces."""
    base, agent_src = workdir
    inv = _inventory(base, 81, 24379, agent_src, helpers)
    inv["pyctdb"]["vars"].update({
        "pyctdb_ip_alloc_algorithm": "deterministic",
        "pyctdb_no_ip_failback": True,
        "pyctdb_public_interfaces": ["eth2", "eth3"],
        "pyctdb_public_addresses": [
            {"address": "192.0.2.10", "prefix": 24},
            {"address": "192.0.2.11", "prefix": 24, "interfaces": ["eth0"]}],
    })
    p = _playbook(helpers, base, "render.yml", RENDER, inv)
    assert p.returncode == 0, p.stdout[-4000:]
    assert _rendered(base, "pyctdb.tunables") == [
        "IPAllocAlgorithm=0", "KeepaliveInterval=1", "NoIPFailback=1"]
    assert _rendered(base, "public_addresses") == [
        "192.0.2.10/24 eth2,eth3", "192.0.2.11/24 eth0"]

    # The defaults write nothing extra; an explicit tunable wins over the variable.
    inv["pyctdb"]["vars"].update({"pyctdb_ip_alloc_algorithm": "lcp2",
                                  "pyctdb_no_ip_failback": False,
                                  "pyctdb_no_ip_takeover": True,
                                  "pyctdb_tunables": {"NoIPTakeover": 0}})
    p = _playbook(helpers, base, "render.yml", RENDER, inv)
    assert p.returncode == 0, p.stdout[-4000:]
    assert _rendered(base, "pyctdb.tunables") == ["NoIPTakeover=0"]


def test_role_refuses_public_address_without_interfaces(workdir, helpers):
    base, agent_src = workdir
    inv = _inventory(base, 82, 24379, agent_src, helpers)
    inv["pyctdb"]["vars"]["pyctdb_public_addresses"] = [
        {"address": "192.0.2.10", "prefix": 24},
        {"address": "192.0.2.11", "prefix": 24, "interfaces": []},
        {"address": "192.0.2.12", "prefix": 24, "interfaces": ["eth0"]}]
    p = _playbook(helpers, base, "play.yml", PLAY, inv)
    assert p.returncode != 0
    out = p.stdout.replace("\n", " ")
    assert "public addresses 192.0.2.10, 192.0.2.11 of node1 have no interfaces" in out
    assert "Nothing was changed" in out
    assert not any(os.path.exists(os.path.join(base, "node%d" % i)) for i in (1, 2, 3))


# -- the cluster key (issue 11: an authenticated transport) --------------------------------

KEY_PLAY = PLAY + """    - ansible.builtin.debug:
        msg: "TOGETHER {{ inventory_hostname }} {{ pyctdb__restart_together }}"
"""
# Once the agent is installed: the same without the install step (faster).
KEY_PLAY_CONFIG = "\n".join(ln for ln in KEY_PLAY.splitlines() if "tasks_from: install" not in ln)

KEY_HEADER = "# pyctdb cluster key (Ansible managed): the first key connects, every key is accepted."


def _key_file(base, i):
    """``(keys, mode, uid, text)`` of node i's cluster.key; None when it has none."""
    path = os.path.join(base, "node%d" % i, "etc", "cluster.key")
    if not os.path.exists(path):
        return None
    st = os.stat(path)
    with open(path) as f:
        text = f.read()
    keys = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    return keys, st.st_mode & 0o7777, st.st_uid, text


def _cluster_keys(base):
    """The key list every node has (they must agree)."""
    files = [_key_file(base, i) for i in (1, 2, 3)]
    assert all(f is not None for f in files), files
    assert all(f[1] == 0o600 and f[2] == 0 for f in files), [f[1:3] for f in files]
    assert len({tuple(f[0]) for f in files}) == 1, [f[0] for f in files]
    assert all(f[3] == KEY_HEADER + "\n" + "".join(k + "\n" for k in f[0]) for f in files)
    return files[0][0]


def _together(out):
    return {h: v == "True" for h, v in re.findall(r"TOGETHER (node\d) (\w+)", out)}


def _restarts(out):
    """Whether the role's restart handler was notified (the handlers themselves skip:
    pyctdb_service_state is stopped here)."""
    return "RUNNING HANDLER [pyctdb.cluster.node : Restart pyctdbd" in out


def _fingerprint(keys):
    import hashlib
    return hashlib.sha256(",".join(keys).encode()).hexdigest()[:12]


def _ok(p, *secrets_):
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    for k in secrets_:  # no_log: a key never shows in Ansible's output
        assert k not in p.stdout and k not in p.stderr
    return _recap(p.stdout)


@pytest.mark.skipif(os.geteuid() != 0, reason="the role writes root-owned files")
def test_role_cluster_key_generated_reused_and_rotated(workdir, helpers):
    import secrets
    base, agent_src = workdir
    subnet, port = random.randint(20, 250), random.randint(20000, 60000)
    inv = _inventory(base, subnet, port, agent_src, helpers)

    def run(*extra):
        return _playbook(helpers, base, "key.yml", KEY_PLAY_CONFIG, inv, *extra)

    # Generated once for the cluster: the same key on every node, mode 0600, root.
    p = _playbook(helpers, base, "play.yml", KEY_PLAY, inv)
    _ok(p)
    keys = _cluster_keys(base)
    _ok(p, *keys)
    assert len(keys) == 1 and re.fullmatch("[0-9a-f]{64}", keys[0])
    assert _together(p.stdout) == {"node1": True, "node2": True, "node3": True}
    key_a = keys[0]

    # Stable: a second run (and a check-mode run) changes nothing and keeps the key.
    for extra in ((), ("--check",)):
        recap = _ok(run(*extra), key_a)
        assert all(r["changed"] == 0 for r in recap.values()), (extra, recap)
        assert _cluster_keys(base) == [key_a]

    # A node without a key (a new node) gets the cluster's key, not a new one.
    os.unlink(os.path.join(base, "node3", "etc", "cluster.key"))
    p = run()
    recap = _ok(p, key_a)
    assert _cluster_keys(base) == [key_a]
    assert recap["node1"]["changed"] == 0 and recap["node2"]["changed"] == 0
    assert recap["node3"]["changed"] > 0
    # its agent (re)starts to take it; the others are not touched
    assert _restarts(p.stdout)
    assert _together(p.stdout) == {"node1": False, "node2": False, "node3": True}

    # A rotation with no downtime: [A, B], then [B, A], then [B]. The running agents read
    # a changed key file again by themselves: nothing restarts, and at every step a node
    # that has read the new file and one that has not yet accept each other's key.
    key_b = secrets.token_hex(32)
    for extra, expected in (({"pyctdb_transport_keys": [key_a, key_b]}, [key_a, key_b]),
                            ({"pyctdb_transport_keys": [key_b.upper(), key_a]}, [key_b, key_a]),
                            ({"pyctdb_transport_key": key_b}, [key_b]),
                            ({}, [key_b])):
        p = run("-e", json.dumps(extra))
        recap = _ok(p, key_a, key_b, key_b.upper())
        assert _cluster_keys(base) == expected, extra
        assert not _restarts(p.stdout), extra
        if not extra:  # the keys the nodes have are kept
            assert all(r["changed"] == 0 for r in recap.values()), recap

    # A key replaced in one step: written, read again by the agents, nothing restarts
    # (links that break before every node has it come back once they all have it).
    key_c = secrets.token_hex(32)
    p = run("-e", json.dumps({"pyctdb_transport_key": key_c}))
    _ok(p, key_b, key_c)
    assert _cluster_keys(base) == [key_c]
    assert not _restarts(p.stdout)

    # Nodes that disagree: refused before anything changes, keys named by fingerprint.
    key_d = secrets.token_hex(32)
    node2_key = os.path.join(base, "node2", "etc", "cluster.key")
    with open(node2_key, "w") as f:
        f.write(key_d + "\n")
    conf = os.path.join(base, "node1", "etc", "pyctdb.conf")
    conf_mtime = os.stat(conf).st_mtime_ns
    p = run("-e", json.dumps({"pyctdb_log_level": "DEBUG"}))
    assert p.returncode != 0
    out = p.stdout.replace("\n", " ")
    assert key_c not in out and key_d not in out
    assert "the nodes' cluster keys (%s/node1/etc/cluster.key) differ" % base in out
    assert ("node1: %s; node2: %s; node3: %s" % (_fingerprint([key_c]), _fingerprint([key_d]),
                                                  _fingerprint([key_c]))) in out
    assert "Give the key with pyctdb_transport_key" in out and "Nothing was changed" in out
    assert os.stat(conf).st_mtime_ns == conf_mtime
    with open(node2_key) as f:
        assert f.read() == key_d + "\n"
    assert _key_file(base, 1)[0] == [key_c] and _key_file(base, 3)[0] == [key_c]

    # The operator says which: node2 gets it (and restarts alone: its key was foreign).
    p = run("-e", json.dumps({"pyctdb_transport_key": key_c}))
    recap = _ok(p, key_c, key_d)
    assert _cluster_keys(base) == [key_c]
    assert recap["node1"]["changed"] == 0 and recap["node3"]["changed"] == 0
    assert not _restarts(p.stdout)

    # pyctdb_transport_rotate_to (playbooks/rotate_key.yml): one step of the rotation a
    # run, from the keys the nodes have, each step restarting one node at a time; then
    # nothing changes.
    key_e = secrets.token_hex(32)
    rotate = json.dumps({"pyctdb_transport_rotate_to": key_e})
    for step, expected in enumerate(([key_c, key_e], [key_e, key_c], [key_e], [key_e])):
        p = run("-e", rotate)
        recap = _ok(p, key_c, key_e)
        assert _cluster_keys(base) == expected, step
        assert not _restarts(p.stdout), step
    assert all(r["changed"] == 0 for r in recap.values()), recap
    key_c = key_e

    # pyctdb_transport_auth: false removes the key files (the agents then run
    # unauthenticated, together), and stays that way.
    no_auth = json.dumps({"pyctdb_transport_auth": False})
    p = run("-e", no_auth)
    _ok(p, key_c)
    assert [_key_file(base, i) for i in (1, 2, 3)] == [None, None, None]
    assert _restarts(p.stdout)
    assert _together(p.stdout) == {"node1": True, "node2": True, "node3": True}
    recap = _ok(run("-e", no_auth))
    assert all(r["changed"] == 0 for r in recap.values()), recap
    with open(os.path.join(base, "node1", "etc", "pyctdb.conf")) as f:
        assert "key" not in f.read()  # the agent's default path: no option needed

    # Turned on again without a key given: a new one is generated (there is none left).
    p = run()
    _ok(p)
    keys = _cluster_keys(base)
    _ok(p, *keys)
    assert len(keys) == 1 and keys[0] not in (key_a, key_b, key_c, key_d)
    assert _restarts(p.stdout)
    assert _together(p.stdout) == {"node1": True, "node2": True, "node3": True}


@pytest.mark.parametrize("extra, host_extra, message", [
    ({"pyctdb_transport_keys": ["%064x" % 1, "%064x" % 2, "%064x" % 3]}, None,
     "pyctdb_transport_keys has 3 keys: give one, or two during a rotation"),
    ({"pyctdb_transport_key": "c0ffee"}, None,
     "the cluster key must be 64 hexadecimal characters (32 random bytes, e.g. from "
     "`openssl rand -hex 32`): key 1 (6 characters) of pyctdb_transport_key is not"),
    ({"pyctdb_transport_keys": ["%064x" % 1, "z" * 64]}, None,
     "key 2 (64 characters) of pyctdb_transport_keys is not"),
    ({"pyctdb_transport_keys": ["%064x" % 1], "pyctdb_transport_key": "%064x" % 1}, None,
     "set pyctdb_transport_key or pyctdb_transport_keys, not both"),
    ({"pyctdb_transport_keys": ["%064x" % 7, "%064X" % 7]}, None,
     "pyctdb_transport_keys lists the same key twice"),
    ({}, {"node2": {"pyctdb_transport_key": "%064x" % 9}},
     "the hosts would not all have the same cluster key"),
    ({}, {"node3": {"pyctdb_transport_auth": False}},
     "node3: none. Nothing was changed."),
    ({"pyctdb_transport_rotate_to": "%064x" % 9, "pyctdb_transport_key": "%064x" % 9}, None,
     "pyctdb_transport_rotate_to rotates the key the nodes have: it cannot be used with "
     "pyctdb_transport_key or pyctdb_transport_keys"),
    ({"pyctdb_transport_rotate_to": "c0ffee"}, None,
     "pyctdb_transport_rotate_to (6 characters) is not"),
])
def test_role_refuses_bad_cluster_keys(workdir, helpers, extra, host_extra, message):
    base, agent_src = workdir
    inv = _inventory(base, 83, 24379, agent_src, helpers, host_extra=host_extra)
    p = _playbook(helpers, base, "play.yml", PLAY, inv, "-e", json.dumps(extra))
    assert p.returncode != 0
    out = re.sub(r"\s+", " ", p.stdout)
    assert message in out, out[-3000:]
    assert "Nothing was changed" in out
    assert "%064x" % 9 not in out and "c0ffee" not in out
    assert not any(os.path.exists(os.path.join(base, "node%d" % i)) for i in (1, 2, 3))


def test_role_refuses_to_generate_a_key_for_part_of_the_cluster(workdir, helpers):
    """With --limit and no key anywhere in the play, a generated key could differ from the
    one the other nodes have: refused (a given key is fine)."""
    base, agent_src = workdir
    inv = _inventory(base, 84, 24379, agent_src, helpers)
    p = _playbook(helpers, base, "play.yml", PLAY, inv, "--limit", "node1,node2")
    assert p.returncode != 0
    out = re.sub(r"\s+", " ", p.stdout)
    assert ("no host of the play has a cluster key, and hosts of the group 'pyctdb' are "
            "outside the play (--limit): node3; a key generated now") in out
    assert not any(os.path.exists(os.path.join(base, "node%d" % i)) for i in (1, 2, 3))


KEYS_ONLY = """
- hosts: pyctdb
  gather_facts: false
  tasks:
    - ansible.builtin.include_role: {name: pyctdb.cluster.node, tasks_from: nodes}
    - ansible.builtin.include_role: {name: pyctdb.cluster.node, tasks_from: transport_key}
    - ansible.builtin.debug: {msg: "KEYS {{ inventory_hostname }} {{ pyctdb__keys | join(',') }}"}
"""


@pytest.mark.parametrize("files, expected", [
    # step 1 stopped half-way: it is finished
    ({"node1": ["o", "n"], "node2": ["o", "n"], "node3": ["o"]}, ["o", "n"]),
    # step 2 stopped half-way
    ({"node1": ["n", "o"], "node2": ["o", "n"], "node3": ["o", "n"]}, ["n", "o"]),
    # step 3 stopped half-way
    ({"node1": ["n"], "node2": ["n", "o"], "node3": ["n", "o"]}, ["n"]),
    # step 1 of another rotation stopped half-way: a new rotation from the key in use
    ({"node1": ["o"], "node2": ["o", "m"], "node3": ["o"]}, ["o", "n"]),
    # nodes that do not share a key: no step is safe
    ({"node1": ["o"], "node2": ["m"], "node3": ["o"]}, None),
], ids=["step1", "step2", "step3", "other-rotation", "no-common-key"])
def test_role_rotation_goes_on_after_a_step_stopped_half_way(workdir, helpers, files, expected):
    """pyctdb_transport_rotate_to=n with the nodes at two steps of a rotation: the role
    writes the list that every node accepts the connections of (the step finished)."""
    import secrets
    base, agent_src = workdir
    keys = {name: secrets.token_hex(32) for name in "omn"}
    for host, names in files.items():
        os.makedirs(os.path.join(base, host, "etc"))
        with open(os.path.join(base, host, "etc", "cluster.key"), "w") as f:
            f.write("".join(keys[n] + "\n" for n in names))
    inv = _inventory(base, 85, 24379, agent_src, helpers)
    p = _playbook(helpers, base, "keys.yml", KEYS_ONLY, inv, "-e",
                  json.dumps({"pyctdb_transport_rotate_to": keys["n"]}))
    if expected is None:
        assert p.returncode != 0
        out = re.sub(r"\s+", " ", p.stdout)
        assert "the nodes' cluster keys (%s/node1/etc/cluster.key) differ" % base in out
        return
    assert p.returncode == 0, p.stdout[-4000:]
    got = dict(re.findall(r"KEYS (node\d) ([0-9a-f,]+)", p.stdout))
    want = ",".join(keys[n] for n in expected)
    assert got == {"node1": want, "node2": want, "node3": want}
