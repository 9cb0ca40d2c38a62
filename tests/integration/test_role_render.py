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
