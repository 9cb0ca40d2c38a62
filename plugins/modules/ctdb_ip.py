#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2025, pyctdb authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: ctdb_ip
short_description: Manage a public address of a pyctdb cluster at runtime
version_added: 0.2.0
description:
  - Makes sure a public address is (O(state=present)) or is not (O(state=absent)) in the
    runtime public address list of the node the module runs on, like C(ctdb addip) and
    C(ctdb delip) do, through the local agent's API.
  - After a change the agent asks the leader for a takeover run and waits for it, so an
    added address is hosted by some node, and a removed one is released (and moves to
    another node that lists it, if any) when the module returns.
  - With O(pnn), also makes sure the address is hosted by that node (like C(ctdb moveip)),
    waiting until the move has happened.
  - Like CTDB, this changes the running agent only, B(not) its C(public_addresses) file;
    the change is lost when the agent restarts or runs C(reloadips). To make it
    permanent, also put the address into the file (the role's
    C(pyctdb_public_addresses)).
extends_documentation_fragment:
  - pyctdb.cluster.agent
author:
  - pyctdb authors
options:
  address:
    description:
      - The public address (IPv4 or IPv6, without mask).
    type: str
    required: true
  prefix:
    description:
      - Mask bits of the address (1-32 for IPv4, 1-128 for IPv6).
      - Required to add the address; when the node already lists it with another prefix,
        the address is removed and added again with this one (released first if hosted).
    type: int
  interfaces:
    description:
      - Interfaces that may carry the address, in order of preference.
      - Required to add the address; when the node already lists it with other
        interfaces, it is removed and added again (released first if hosted).
    type: list
    elements: str
  state:
    description:
      - V(present) - the address is in this node's list.
      - V(absent) - it is not in this node's list (other nodes' lists are not touched;
        run the module there too).
    type: str
    choices: [present, absent]
    default: present
  pnn:
    description:
      - With O(state=present), the PNN of the node that must host the address. That node
        must list the address (this node, or another node where it was added).
      - The address is moved there if it is elsewhere; the module waits up to
        O(timeout) seconds for the move.
      - Note that the leader may move it again later (a node failing, a takeover run
        rebalancing with C(NoIPFailback=0)).
    type: int
  timeout:
    description:
      - Seconds to wait for the address to be hosted by O(pnn).
    type: int
    default: 30
attributes:
  check_mode:
    support: full
    description: Arguments are validated by the agent without changing anything, and the
      module reports what it would change.
  diff_mode:
    support: full
    description: The address as this node lists it (state, prefix, interfaces) and its
      hosting node, before and after.
seealso:
  - module: pyctdb.cluster.ctdb_status
  - name: pyctdb local API
    description: The API commands C(addip), C(delip), C(moveip) and C(ip).
    link: https://github.com/pyctdb/pyctdb/blob/main/docs/api.md
"""

EXAMPLES = r"""
- name: 10.89.6.100 can be hosted by every node
  pyctdb.cluster.ctdb_ip:
    address: 10.89.6.100
    prefix: 24
    interfaces: [eth1]

- name: ... and is hosted by node 2
  pyctdb.cluster.ctdb_ip:
    address: 10.89.6.100
    prefix: 24
    interfaces: [eth1]
    pnn: 2
  run_once: true

- name: Node 3 no longer hosts 10.89.6.100 (it moves to another node that lists it)
  pyctdb.cluster.ctdb_ip:
    address: 10.89.6.100
    state: absent
  when: inventory_hostname == 'node3'
"""

RETURN = r"""
address:
  description: The address, normalized.
  returned: always
  type: str
  sample: 10.89.6.100
state:
  description: V(present) when this node lists the address (after the change), else
    V(absent).
  returned: success
  type: str
  sample: present
prefix:
  description: Mask bits in this node's list (V(null) when absent).
  returned: success
  type: int
  sample: 24
interfaces:
  description: Interfaces in this node's list (V(null) when absent).
  returned: success
  type: list
  elements: str
  sample: [eth1]
pnn:
  description: PNN of the node hosting the address, V(-1) when no node hosts it.
  returned: success
  type: int
  sample: 2
nodes:
  description: PNNs of the nodes that list the address.
  returned: success
  type: list
  elements: int
  sample: [0, 1, 2]
this_node:
  description: PNN of the node the module ran on.
  returned: success
  type: int
  sample: 0
actions:
  description: What was done (or would be done in check mode), in order.
  returned: success
  type: list
  elements: str
  sample: ["addip 10.89.6.100/24 eth1", "moveip 10.89.6.100 to node 2"]
waited:
  description: Seconds spent waiting for the address to reach O(pnn).
  returned: success
  type: float
  sample: 0.2
"""

import ipaddress

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pyctdb.cluster.plugins.module_utils.pyctdb_client import (
    DEFAULT_SOCKET, agent_argument_spec, Client, PyctdbError, fail_from_error, wait_until)


def view(me, addr, addresses):
    """The relevant state of ``addr``: this node's entry and who hosts it."""
    e = addresses.get(addr)
    mine = e is not None and me in e["nodes"]
    return {"address": addr, "state": "present" if mine else "absent",
            "prefix": e["prefix"] if mine else None,
            "interfaces": e["interfaces"] if mine else None,
            "pnn": e["pnn"] if e else -1, "nodes": e["nodes"] if e else []}


def main():
    module = AnsibleModule(
        argument_spec=dict(agent_argument_spec(),
            address=dict(type="str", required=True),
            prefix=dict(type="int"),
            interfaces=dict(type="list", elements="str"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            pnn=dict(type="int"),
            timeout=dict(type="int", default=30),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        addr = str(ipaddress.ip_address(p["address"].strip()))
    except ValueError:
        module.fail_json(msg="address: invalid IP address %r (give it without a mask; the "
                         "mask goes into prefix)" % p["address"], address=p["address"])
    if p["state"] == "absent" and p["pnn"] is not None:
        module.fail_json(msg="pnn (the node to host the address) cannot be used with "
                         "state=absent", address=addr)
    socket_path = p["socket"] or DEFAULT_SOCKET
    client = Client(socket_path, timeout=30)
    done = []  # the changes made so far, for a failure half-way
    try:
        run(module, client, addr, done)
    except PyctdbError as exc:
        fail_from_error(module, exc, socket_path, p["config_dir"], address=addr,
                        changed=bool(done), actions=done)
    finally:
        client.close()


def run(module, client, addr, done):
    p = module.params
    check = module.check_mode
    me = client.pnn()
    before = view(me, addr, client.public_addresses())
    after = dict(before)
    actions = []
    if p["state"] == "absent":
        if before["state"] == "present":
            actions.append("delip %s" % addr)
            if not check:
                client.delip(addr)
                done.append(actions[-1])
            after.update(state="absent", prefix=None, interfaces=None,
                         nodes=[n for n in before["nodes"] if n != me])
            if before["pnn"] == me:
                after["pnn"] = -1  # released here; maybe taken by another node
    else:
        prefix = p["prefix"] if p["prefix"] is not None else before["prefix"]
        ifaces = p["interfaces"] if p["interfaces"] is not None else before["interfaces"]
        differs = before["state"] == "present" and (
            prefix != before["prefix"] or list(ifaces) != list(before["interfaces"]))
        if before["state"] == "absent" or differs:
            if prefix is None or not ifaces:
                module.fail_json(msg="prefix and interfaces are needed to add %s to node %d's "
                                 "public addresses" % (addr, me), address=addr, changed=False)
            # the agent checks the values (and changes nothing) before anything is done
            client.addip(addr, prefix, ifaces, check=True)
            if differs:
                actions.append("delip %s" % addr)
            actions.append("addip %s/%d %s" % (addr, prefix, ",".join(ifaces)))
            after.update(state="present", prefix=prefix, interfaces=list(ifaces),
                         nodes=sorted(set(before["nodes"]) | {me}))
        target = p["pnn"]
        if target is not None:
            check_target(module, client, addr, target, after["nodes"])
        if not check and actions:
            if differs:
                client.delip(addr)
                done.append(actions[0])
            client.addip(addr, prefix, ifaces)
            done.append(actions[-1])
            after["pnn"] = view(me, addr, client.public_addresses())["pnn"]
        if target is not None and after["pnn"] != target:
            actions.append("moveip %s to node %d" % (addr, target))
            if not check:
                client.moveip(addr, target)
                done.append(actions[-1])
            after["pnn"] = target
    waited = 0.0
    if not check and actions:
        after = view(me, addr, client.public_addresses())
        if p["pnn"] is not None and after["pnn"] != p["pnn"]:
            def hosted():
                now = view(me, addr, client.public_addresses())
                return now if now["pnn"] == p["pnn"] else None
            got, waited = wait_until(hosted, p["timeout"])
            if got is None:
                module.fail_json(msg="timed out after %ss waiting for %s to be hosted by node "
                                 "%d (it is on node %s)" % (p["timeout"], addr, p["pnn"],
                                                           after["pnn"]),
                                 changed=True, actions=actions, address=addr)
            after = got
    result = dict(after, changed=bool(actions), actions=actions, this_node=me, waited=waited)
    if module._diff:
        keys = ("state", "prefix", "interfaces", "pnn")
        result["diff"] = {"before": dict((k, before[k]) for k in keys),
                          "after": dict((k, after[k]) for k in keys),
                          "before_header": "%s (node %d)" % (addr, me),
                          "after_header": "%s (node %d)" % (addr, me)}
    module.exit_json(**result)


def check_target(module, client, addr, target, nodes):
    """Fail, before anything is changed, unless node ``target`` exists and lists
    ``addr`` (``nodes``: the nodes that will list it)."""
    known = dict((n["pnn"], n) for n in client.status()["nodes"])
    if target not in known or known[target].get("deleted"):
        module.fail_json(msg="pnn: node %d does not exist (nodes: %s)" % (
            target, ", ".join(str(n) for n in sorted(known) if not known[n].get("deleted"))),
            address=addr, changed=False)
    if target not in nodes:
        module.fail_json(msg="node %d cannot host %s: it is not in that node's public "
                         "addresses (nodes listing it: %s)" % (
                             target, addr, ", ".join(map(str, nodes)) or "none"),
                         address=addr, changed=False)


if __name__ == "__main__":
    main()
