#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2025, pyctdb authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: ctdb_node
short_description: Enable, disable, stop or ban a node of a pyctdb cluster
version_added: 0.2.0
description:
  - Sets the administrative state of a cluster node through the local agent's API, as
    C(ctdb disable), C(enable), C(stop), C(continue), C(ban) and C(unban) do; for this
    node or, with O(pnn), for another one (C(ctdb -n PNN ...)).
  - The states are exclusive administrative states. Going to one clears the
    administrative flags of the others (for example O(state=disabled) on a stopped node
    disables it, then continues it). The new flag is set before the old ones are
    cleared, so the node does not become active in between.
  - Waits until the node the module runs on sees the new state.
  - Health (UNHEALTHY, from the monitor event) and connectivity (DISCONNECTED) are not
    administrative; they are reported, not changed.
extends_documentation_fragment:
  - pyctdb.cluster.agent
author:
  - pyctdb authors
options:
  state:
    description:
      - V(enabled) - none of DISABLED, STOPPED, BANNED (C(ctdb enable), C(continue),
        C(unban) as needed).
      - V(disabled) - DISABLED (C(ctdb disable)); the node stays in the cluster but hosts
        no public addresses.
      - V(stopped) - STOPPED (C(ctdb stop)); the node is inactive until enabled again.
      - V(banned) - BANNED for O(ban_time) seconds (C(ctdb ban)). A node already banned is
        left as it is (its ban is not extended).
    type: str
    choices: [enabled, disabled, stopped, banned]
    required: true
  pnn:
    description:
      - PNN of the node to act on; default the node the module runs on.
    type: int
  ban_time:
    description:
      - Seconds the ban lasts; required with O(state=banned). The ban lifts itself after
        that time.
    type: int
  timeout:
    description:
      - Seconds to wait until the new state is seen.
    type: int
    default: 30
attributes:
  check_mode:
    support: full
    description: Reports what would be done without doing it.
  diff_mode:
    support: full
    description: The node's administrative flags and state before and after.
seealso:
  - module: pyctdb.cluster.ctdb_status
"""

EXAMPLES = r"""
- name: Take this node out of service (it keeps its cluster membership)
  pyctdb.cluster.ctdb_node:
    state: disabled

- name: Back in service
  pyctdb.cluster.ctdb_node:
    state: enabled

- name: Ban node 2 for ten minutes, from whichever node this runs on
  pyctdb.cluster.ctdb_node:
    pnn: 2
    state: banned
    ban_time: 600
  run_once: true
"""

RETURN = r"""
pnn:
  description: PNN of the node acted on.
  returned: success
  type: int
  sample: 2
state:
  description: The node's administrative state afterwards (V(enabled), V(disabled),
    V(stopped), V(banned); several joined by C(,) if several flags are set).
  returned: success
  type: str
  sample: disabled
node_state:
  description: The node's full state as C(ctdb status) prints it (V(OK), V(DISABLED),
    V(BANNED|INACTIVE), V(UNHEALTHY), ...).
  returned: success
  type: str
  sample: DISABLED
flags:
  description: The node's CTDB flags afterwards.
  returned: success
  type: int
  sample: 4
actions:
  description: The API commands run (or that would run in check mode), in order.
  returned: success
  type: list
  elements: str
  sample: [disable]
waited:
  description: Seconds spent waiting for the new state to be seen.
  returned: success
  type: float
  sample: 0.1
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pyctdb.cluster.plugins.module_utils.pyctdb_client import (
    DEFAULT_SOCKET, agent_argument_spec, Client, PyctdbError, fail_from_error, wait_until)

# CTDB's node flags (see docs/api.md)
DISCONNECTED = 0x01
DISABLED = 0x04
BANNED = 0x08
STOPPED = 0x20
#: administrative flag -> (state name, API command setting it, API command clearing it)
ADMIN = ((DISABLED, "disabled", "disable", "enable"),
         (STOPPED, "stopped", "stop", "continue"),
         (BANNED, "banned", "ban", "unban"))
WANT = {"enabled": 0, "disabled": DISABLED, "stopped": STOPPED, "banned": BANNED}


def admin_state(flags):
    names = [name for bit, name, _s, _c in ADMIN if flags & bit]
    return ",".join(names) or "enabled"


def plan(flags, state):
    """The API commands that bring a node with ``flags`` to ``state``: set first, then
    clear."""
    want = WANT[state]
    sets = [cmd for bit, _n, cmd, _c in ADMIN if want & bit and not flags & bit]
    clears = [cmd for bit, _n, _s, cmd in ADMIN if flags & bit and not want & bit]
    return sets + clears


def node_of(status, pnn):
    return next((n for n in status.get("nodes") or [] if n.get("pnn") == pnn), None)


def main():
    module = AnsibleModule(
        argument_spec=dict(agent_argument_spec(),
            state=dict(type="str", required=True, choices=sorted(WANT)),
            pnn=dict(type="int"),
            ban_time=dict(type="int"),
            timeout=dict(type="int", default=30),
        ),
        required_if=[("state", "banned", ["ban_time"])],
        supports_check_mode=True,
    )
    p = module.params
    if p["ban_time"] is not None and p["ban_time"] <= 0:
        module.fail_json(msg="ban_time must be a positive number of seconds, got %d"
                         % p["ban_time"], changed=False)
    socket_path = p["socket"] or DEFAULT_SOCKET
    client = Client(socket_path, timeout=30)
    done = []
    try:
        run(module, client, done)
    except PyctdbError as exc:
        fail_from_error(module, exc, socket_path, p["config_dir"], changed=bool(done),
                        actions=done)
    finally:
        client.close()


def run(module, client, done):
    p = module.params
    status = client.status()
    pnn = status["pnn"] if p["pnn"] is None else p["pnn"]
    node = node_of(status, pnn)
    if node is None or node.get("deleted"):
        module.fail_json(msg="pnn: node %d does not exist (nodes: %s)" % (pnn, ", ".join(
            str(n["pnn"]) for n in status["nodes"] if not n.get("deleted"))), changed=False)
    if node["flags"] & DISCONNECTED:
        module.fail_json(msg="node %d is not connected (%s): its state cannot be changed"
                         % (pnn, node["state"]), changed=False, pnn=pnn)
    before = node
    actions = plan(node["flags"], p["state"])
    after = dict(node)
    waited = 0.0
    if actions and module.check_mode:
        want = WANT[p["state"]]
        flags = (node["flags"] & ~(DISABLED | STOPPED | BANNED)) | want
        after.update(flags=flags, state=None)
    elif actions:
        target = None if p["pnn"] is None else pnn
        for action in actions:
            client.admin(action, pnn=target, seconds=p["ban_time"])
            done.append(action)

        def arrived():
            n = node_of(client.status(), pnn)
            if n and n["flags"] & (DISABLED | STOPPED | BANNED) == WANT[p["state"]]:
                return n
            return None
        got, waited = wait_until(arrived, p["timeout"])
        if got is None:
            now = node_of(client.status(), pnn) or {}
            module.fail_json(msg="timed out after %ss waiting for node %d to be %s (it is %s)"
                             % (p["timeout"], pnn, p["state"], now.get("state")),
                             changed=True, actions=actions, pnn=pnn)
        after = got
    result = dict(pnn=pnn, state=admin_state(after["flags"]), node_state=after["state"],
                  flags=after["flags"], actions=actions, changed=bool(actions), waited=waited)
    if result["node_state"] is None:
        result.pop("node_state")  # check mode: not known before it happens
    if module._diff:
        result["diff"] = {
            "before": {"state": admin_state(before["flags"]), "flags": before["flags"],
                       "node_state": before["state"]},
            "after": {"state": result["state"], "flags": after["flags"],
                      "node_state": result.get("node_state", "(not known in check mode)")},
            "before_header": "node %d" % pnn, "after_header": "node %d" % pnn}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
