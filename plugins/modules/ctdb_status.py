#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2025, pyctdb authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: ctdb_status
short_description: Read the cluster status from the local pyctdb agent, optionally waiting
version_added: 0.1.0
description:
  - Asks the C(pyctdbd) agent on the target node, through its local JSON API socket, how
    it sees the cluster (the equivalent of C(ctdb status)), with the public addresses and
    which node hosts each (C(ctdb ip all)), and returns it as facts-like data.
  - Can wait until this node has joined the cluster or until the whole cluster is healthy,
    and fails with an explanation of what is not yet right when that does not happen in
    time.
  - When the agent does not answer at all, fails with a diagnosis of why (systemd state of
    the C(pyctdbd) unit, whether the socket exists, the last lines of the agent's log).
  - Never changes anything.
extends_documentation_fragment:
  - pyctdb.cluster.agent
author:
  - pyctdb authors
options:
  wait_for:
    description:
      - V(none) reads the status once.
      - V(joined) waits until this node has joined the cluster (a leader is known, its
        generation adopted, recovery mode NORMAL), like the agent's systemd readiness.
      - V(healthy) waits until every node that is not deleted is OK, all report the same
        leader as this node, and the recovery mode is NORMAL (see also O(expected_nodes)).
      - While waiting, an agent that does not answer yet is retried until O(timeout).
    type: str
    choices: [none, joined, healthy]
    default: none
  timeout:
    description:
      - Seconds to wait for the condition of O(wait_for) before failing.
    type: int
    default: 60
  delay:
    description:
      - Seconds between two polls while waiting.
    type: float
    default: 0.5
  expected_nodes:
    description:
      - With O(wait_for=healthy), also require exactly this many nodes that are not
        deleted, so that a node missing from the nodes file is noticed.
      - Ignored for the other values of O(wait_for).
    type: int
attributes:
  check_mode:
    support: full
    description: The module only reads; it runs the same way in check mode.
  diff_mode:
    support: none
seealso:
  - name: pyctdb local API
    description: The JSON API this module speaks.
    link: https://github.com/pyctdb/pyctdb/blob/main/docs/api.md
"""

EXAMPLES = r"""
- name: Read the cluster status
  pyctdb.cluster.ctdb_status:
  register: ctdb

- name: Show the leader
  ansible.builtin.debug:
    msg: "node {{ ctdb.pnn }}: leader {{ ctdb.leader }}, {{ ctdb.ok_nodes }}/{{ ctdb.num_nodes }} OK"

- name: Wait until this node has joined the cluster
  pyctdb.cluster.ctdb_status:
    wait_for: joined
    timeout: 120

- name: Wait until all three nodes are healthy
  pyctdb.cluster.ctdb_status:
    wait_for: healthy
    expected_nodes: 3
    timeout: 120

- name: Ask an agent serving another socket
  pyctdb.cluster.ctdb_status:
    socket: /tmp/test/node0/pyctdbd.socket

# Ad hoc:
#   ansible all -m pyctdb.cluster.ctdb_status
#   ansible all -m pyctdb.cluster.ctdb_status -a 'wait_for=healthy expected_nodes=3'
"""

RETURN = r"""
pnn:
  description: This node's PNN.
  returned: when the agent answered
  type: int
  sample: 0
num_nodes:
  description: Number of nodes in the nodes file, deleted ones included (as C(ctdb status)).
  returned: when the agent answered
  type: int
  sample: 3
nodes:
  description: Every node as this node sees it.
  returned: when the agent answered
  type: list
  elements: dict
  contains:
    pnn:
      description: The node's PNN.
      type: int
    address:
      description: The node's cluster address (V(null) for a deleted node).
      type: str
    flags:
      description: CTDB's numeric node flags (DISCONNECTED 0x01, UNHEALTHY 0x02,
        DISABLED 0x04, BANNED 0x08, DELETED 0x10, STOPPED 0x20, UNKNOWN 0x40).
      type: int
    flag_names:
      description: Names of the flags set, INACTIVE included.
      type: list
      elements: str
    state:
      description: V(OK) or the flag names joined by C(|), as C(ctdb status) prints them.
      type: str
    this_node:
      description: Whether this entry is the node the module ran on.
      type: bool
    deleted:
      description: Whether the node is a deleted (C(#)) line of the nodes file.
      type: bool
    leader:
      description: The leader that node last reported (V(null) when unknown).
      type: int
    generation:
      description: The generation that node last reported (V(null) when unknown).
      type: int
  sample:
    - {pnn: 0, address: 10.89.5.11, flags: 0, flag_names: [], state: OK, this_node: true,
       deleted: false, leader: 0, generation: 1392714231}
this_node:
  description: The entry of O(nodes) for the node the module ran on.
  returned: when the agent answered
  type: dict
leader:
  description: PNN of the leader (V(null) while no leader is known).
  returned: when the agent answered
  type: int
  sample: 0
generation:
  description: The cluster generation (V(null) while invalid).
  returned: when the agent answered
  type: int
  sample: 1392714231
recovery_mode:
  description: V(NORMAL) or V(RECOVERY).
  returned: when the agent answered
  type: str
  sample: NORMAL
vnnmap:
  description: PNNs in the VNN map.
  returned: when the agent answered
  type: list
  elements: int
  sample: [0, 1, 2]
joined:
  description: This node has a leader, the leader's generation and recovery mode NORMAL.
  returned: when the agent answered
  type: bool
healthy:
  description: Every node that is not deleted is OK, all report the same leader as this
    node, recovery mode NORMAL.
  returned: when the agent answered
  type: bool
cluster_lock:
  description: The cluster lock as this node sees it.
  returned: when the agent answered
  type: dict
  sample: {configured: true, lock: /shared/.pyctdb.lock, held: true}
transport_authenticated:
  description:
    - Whether the agent's node-to-node transport is authenticated with the cluster key
      (C(transport.authenticated) of the agent's status).
    - V(false) when the agent runs without a key (anyone who reaches its port could act
      as a node; the agent warns when it starts); V(null) when the agent is too old to
      tell.
  returned: when the agent answered
  type: bool
  sample: true
  version_added: 0.5.0
ok_nodes:
  description: Number of nodes whose state is V(OK).
  returned: when the agent answered
  type: int
  sample: 3
waited:
  description: Seconds spent waiting for O(wait_for).
  returned: always
  type: float
  sample: 1.5
public_addresses:
  description:
    - The cluster's public addresses, keyed by address, as this node learns them from
      every connected node (the API C(ip) command with C(all), like C(ctdb ip all)).
    - V({}) when the cluster has none, or when the agent cannot tell (see
      RV(public_addresses_error)).
  returned: when the agent answered
  type: dict
  contains:
    pnn:
      description: PNN of the node hosting the address; V(-1) when no node hosts it.
      type: int
    nodes:
      description: PNNs of the (connected) nodes that list the address, i.e. can host it.
      type: list
      elements: int
    prefix:
      description: The address's mask bits in this node's list; V(null) when this node
        does not list it.
      type: int
    interfaces:
      description: The interfaces of this node's list for the address; V(null) when this
        node does not list it.
      type: list
      elements: str
  sample:
    10.89.6.100: {pnn: 1, nodes: [0, 1, 2], prefix: 24, interfaces: [eth1]}
    10.89.6.101: {pnn: 2, nodes: [1, 2], prefix: null, interfaces: null}
public_addresses_error:
  description: Why RV(public_addresses) is empty although the agent answered the status
    (e.g. an agent too old to have the C(ip) command).
  returned: when the public addresses could not be read
  type: str
status:
  description: The agent's raw answer to the API C(status) command.
  returned: when the agent answered
  type: dict
log_lines:
  description:
    - The last lines of the agent's log. When the agent does not answer, from its log
      file and/or the journal; when waiting timed out, from the agent (API C(log)).
  returned: on failure
  type: list
  elements: str
systemd:
  description: State of the C(pyctdbd) systemd unit (C(LoadState), C(ActiveState),
    C(SubState), C(Result), C(ExecMainStatus)), V(null) without systemd.
  returned: when the agent does not answer
  type: dict
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pyctdb.cluster.plugins.module_utils.pyctdb_client import (
    DEFAULT_SOCKET, AgentUnavailable, Client, PyctdbError, agent_argument_spec,
    agent_diagnosis, systemd_state)

NODE_KEYS = ("pnn", "address", "flags", "flag_names", "state", "this_node", "deleted",
             "leader", "generation")


def _node_name(node):
    if node.get("address"):
        return "node %s (%s)" % (node.get("pnn"), node.get("address"))
    return "node %s" % node.get("pnn")


def transport_authenticated(status):
    """``transport.authenticated`` of a status answer: True/False, None when the agent
    does not say (an agent older than the authenticated transport)."""
    transport = status.get("transport")
    if not isinstance(transport, dict):
        return None
    value = transport.get("authenticated")
    return value if isinstance(value, bool) else None


def summarize(status, public_addresses=None):
    """The module's return values for one API status answer (and the public addresses
    of the cluster)."""
    nodes = [dict((k, n.get(k)) for k in NODE_KEYS) for n in status.get("nodes") or []]
    this = next((n for n in nodes if n.get("this_node")), None)
    if this is None:
        this = next((n for n in nodes if n.get("pnn") == status.get("pnn")), None)
    return {
        "pnn": status.get("pnn"),
        "num_nodes": status.get("num_nodes", len(nodes)),
        "nodes": nodes,
        "this_node": this,
        "leader": status.get("leader"),
        "generation": status.get("generation"),
        "recovery_mode": status.get("recovery_mode"),
        "vnnmap": status.get("vnnmap"),
        "joined": bool(status.get("joined")),
        "healthy": bool(status.get("healthy")),
        "cluster_lock": status.get("cluster_lock"),
        "transport_authenticated": transport_authenticated(status),
        "ok_nodes": sum(1 for n in nodes if n.get("state") == "OK"),
        "public_addresses": public_addresses or {},
        "status": status,
    }


def problems(status, wait_for, expected_nodes=None):
    """What is not yet right for ``wait_for``: a list of short phrases, empty when the
    condition holds."""
    if wait_for == "none":
        return []
    out = []
    leader = status.get("leader")
    recmode = status.get("recovery_mode")
    nodes = status.get("nodes") or []
    if wait_for == "healthy":
        for n in nodes:
            if not n.get("deleted") and n.get("state") != "OK":
                out.append("%s is %s" % (_node_name(n), n.get("state")))
    if leader is None:
        out.append("leader unknown")
    if status.get("generation") is None:
        out.append("generation invalid")
    if recmode not in (None, "NORMAL"):
        out.append("recovery mode is %s" % recmode)
    if wait_for == "joined":
        if not status.get("joined") and not out:
            out.append("node %s has not joined the cluster yet" % status.get("pnn"))
        return out
    if leader is not None:
        for n in nodes:
            if (not n.get("deleted") and n.get("state") == "OK"
                    and n.get("leader") is not None and n.get("leader") != leader):
                out.append("%s follows leader %s, this node follows %s"
                           % (_node_name(n), n.get("leader"), leader))
    if expected_nodes is not None:
        active = sum(1 for n in nodes if not n.get("deleted"))
        if active != expected_nodes:
            out.append("%d node%s configured (not deleted), expected %d"
                       % (active, "" if active == 1 else "s", expected_nodes))
    if not status.get("healthy") and not out:
        out.append("the agent does not report the cluster healthy yet")
    return out


LOG_LINES_ON_TIMEOUT = 8


def recent_log(socket_path, lines):
    """The agent's most recent log lines (API ``log``), [] when it cannot tell."""
    try:
        with Client(socket_path, timeout=5) as c:
            result = c.call("log", lines=lines) or {}
    except PyctdbError:
        return []
    got = result.get("lines") if isinstance(result, dict) else None
    return [str(line) for line in got][-lines:] if isinstance(got, list) else []


def read_public_addresses(client):
    """``(addresses, error)``: the cluster's public addresses, or {} and why not."""
    try:
        return client.public_addresses(), None
    except PyctdbError as exc:
        client.close()
        return {}, "cannot read the public addresses: %s (%s)" % (exc.message, exc.code)


def main():
    module = AnsibleModule(
        argument_spec=dict(agent_argument_spec(),
            wait_for=dict(type="str", default="none", choices=["none", "joined", "healthy"]),
            timeout=dict(type="int", default=60),
            delay=dict(type="float", default=0.5),
            expected_nodes=dict(type="int"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    socket_path = p["socket"] or DEFAULT_SOCKET
    wait_for = p["wait_for"]
    timeout = max(0, p["timeout"])
    delay = max(0.05, p["delay"])
    expected = p["expected_nodes"] if wait_for == "healthy" else None
    if expected is not None and expected < 1:
        module.fail_json(msg="expected_nodes must be at least 1, got %d" % expected)

    client = Client(socket_path, timeout=min(10.0, max(1.0, float(timeout or 10))))
    start = time.monotonic()
    deadline = start + timeout
    status = None
    unavailable = None
    not_running = 0
    what = {"joined": "this node to join the cluster",
            "healthy": "the cluster to become healthy"}.get(wait_for)
    addresses, addresses_error = {}, None
    try:
        while True:
            try:
                status = client.status()
                unavailable = None
                not_running = 0
            except AgentUnavailable as exc:
                unavailable = exc
                status = None
                client.close()
                if wait_for == "none":
                    break
                # Do not sit out the whole timeout for a unit that is not even running.
                if socket_path == DEFAULT_SOCKET:
                    unit = systemd_state(module)
                    if (unit and unit.get("LoadState") == "loaded"
                            and unit.get("ActiveState") in ("failed", "inactive")):
                        not_running += 1
                        if not_running >= 3:
                            break
            except PyctdbError as exc:
                module.fail_json(msg="pyctdbd at %s: %s" % (socket_path, exc.message),
                                 code=exc.code, changed=False,
                                 waited=round(time.monotonic() - start, 2))
            if status is not None and not problems(status, wait_for, expected):
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())) or 0.01)
        if status is not None:
            addresses, addresses_error = read_public_addresses(client)
    finally:
        client.close()
    waited = round(time.monotonic() - start, 2)

    if status is None:
        diag = agent_diagnosis(module, socket_path=socket_path,
                               config_dir=p["config_dir"], error=unavailable)
        msg = diag["msg"]
        if wait_for != "none":
            msg = "gave up after %ss waiting for %s: %s" % (waited, what, msg)
        module.fail_json(msg=msg, changed=False, waited=waited,
                         code=unavailable.code if unavailable else None,
                         log_lines=diag["log_lines"], systemd=diag["systemd"],
                         socket_exists=diag["socket_exists"])

    result = summarize(status, addresses)
    result.update(changed=False, waited=waited)
    if addresses_error:
        result["public_addresses_error"] = addresses_error
    missing = problems(status, wait_for, expected)
    if missing:
        msg = "timed out after %ss waiting for %s: %s" % (timeout, what, "; ".join(missing))
        # What the agent itself last said usually tells why (e.g. the cluster lock).
        log_lines = recent_log(socket_path, LOG_LINES_ON_TIMEOUT)
        if log_lines:
            msg += "; last log lines of this node's agent:\n  " + "\n  ".join(log_lines)
        module.fail_json(msg=msg, log_lines=log_lines, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
