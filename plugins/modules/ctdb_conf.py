#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2025, pyctdb authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: ctdb_conf
short_description: Ensure parameters of the pyctdb cluster registry (smb.conf, as net conf)
version_added: 0.2.0
description:
  - Sets or removes parameters of one section of the cluster registry, the smb.conf-style
    configuration pyctdb keeps in a persistent clustered database (C(pyctdb conf), as
    Samba's C(net conf)). A change is one transaction, applied on every node at once, so
    run it once per cluster (O(ignore:run_once=true)).
  - Section and parameter names are stored in lower case (as C(net conf setparm) does);
    values are compared as text after removing surrounding blanks.
  - The section C(pyctdb:tunables) holds cluster-wide tunables (CTDB's names, for example
    C(MonitorInterval)); they override every node's tunables file. Names and values are
    checked; a bad one fails the task and changes nothing.
  - With O(registry=samba), the section is one of Samba's own registry configuration
    (C(net conf), what smbd reads with C(include = registry)), clustered through pyctdb's
    CTDB socket. The node needs Samba's C(net) and an smb.conf with C(clustering = yes).
    Samba stores a parameter under its canonical name (C(writeable = yes) is kept as
    C(read only = no)); the module asks Samba itself, in a private scratch registry, what
    the section would be, so a second run is unchanged. The change is one transaction
    (C(net conf import) of the section, or C(net conf delshare)), on every node.
extends_documentation_fragment:
  - pyctdb.cluster.agent
author:
  - pyctdb authors
options:
  section:
    description:
      - Name of the section, for example V(global), a share name, or V(pyctdb:tunables).
    type: str
    required: true
  params:
    description:
      - With O(state=present), the parameters to set, a dictionary of name to value
        (numbers become text, V(true)/V(false) become V(yes)/V(no)); required.
      - With O(state=absent), the parameters to remove (a list of names, or a dictionary
        whose values are ignored); when not given, the whole section is removed.
    type: raw
  state:
    description:
      - V(present) - the parameters in O(params) are set to their values.
      - V(absent) - the parameters in O(params) are not set, or (without O(params)) the
        section does not exist.
    type: str
    choices: [present, absent]
    default: present
  registry:
    description:
      - V(pyctdb) - pyctdb's own cluster registry (C(pyctdb conf)).
      - V(samba) - Samba's registry configuration (C(net conf)), on a node where Samba
        runs clustered on pyctdb.
    type: str
    choices: [pyctdb, samba]
    default: pyctdb
  smb_conf:
    description:
      - With O(registry=samba), the smb.conf C(net) reads (its C(clustering = yes) and
        C(ctdbd socket) reach pyctdb).
    type: path
    default: /etc/samba/smb.conf
  exclusive:
    description:
      - With O(state=present), remove the parameters of the section that are not in
        O(params), so that the section is exactly O(params).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: The agent computes the change without committing it.
  diff_mode:
    support: full
    description: The section before and after, as C(pyctdb conf showsection) prints it.
seealso:
  - module: pyctdb.cluster.ctdb_db
"""

EXAMPLES = r"""
- name: Samba's global settings for the cluster
  pyctdb.cluster.ctdb_conf:
    section: global
    params:
      workgroup: EXAMPLE
      clustering: true
  run_once: true

- name: A share, exactly these parameters
  pyctdb.cluster.ctdb_conf:
    section: data
    params:
      path: /srv/data
      read only: false
    exclusive: true
  run_once: true

- name: Cluster-wide tunables (override each node's tunables file)
  pyctdb.cluster.ctdb_conf:
    section: pyctdb:tunables
    params:
      MonitorInterval: 20
  run_once: true

- name: A share in Samba's own registry configuration (smbd reads it on every node)
  pyctdb.cluster.ctdb_conf:
    registry: samba
    section: data
    params:
      path: /srv/data
      writeable: true
  become: true
  run_once: true

- name: Remove a share
  pyctdb.cluster.ctdb_conf:
    section: data
    state: absent
  run_once: true
"""

RETURN = r"""
section:
  description: The section's stored name.
  returned: success
  type: str
  sample: global
params:
  description: The section's parameters afterwards (name, value pairs, in order); empty
    when the section does not exist.
  returned: success
  type: list
  elements: list
  sample: [[workgroup, EXAMPLE], [clustering, "yes"]]
exists:
  description: Whether the section exists afterwards.
  returned: success
  type: bool
  sample: true
seqnum:
  description: The registry database's sequence number afterwards (before, in check
    mode).
  returned: with O(registry=pyctdb)
  type: int
  sample: 7
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pyctdb.cluster.plugins.module_utils.pyctdb_client import (
    DEFAULT_SOCKET, agent_argument_spec, Client, PyctdbError, fail_from_error)
from ansible_collections.pyctdb.cluster.plugins.module_utils import samba_registry


def main():
    module = AnsibleModule(
        argument_spec=dict(agent_argument_spec(),
            section=dict(type="str", required=True),
            params=dict(type="raw"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            exclusive=dict(type="bool", default=False),
            registry=dict(type="str", default="pyctdb", choices=["pyctdb", "samba"]),
            smb_conf=dict(type="path", default="/etc/samba/smb.conf"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    params = p["params"]
    if p["state"] == "present":
        if not isinstance(params, dict):
            module.fail_json(msg="params must be a dictionary of parameter: value with "
                                 "state=present", changed=False)
        for name, value in params.items():
            if value is None or isinstance(value, (dict, list)):
                module.fail_json(msg="params: the value of %r must be text, a number or a "
                                     "boolean" % name, changed=False)
        args = dict(set_params=params, exclusive=p["exclusive"])
    else:
        if p["exclusive"]:
            module.fail_json(msg="exclusive is only for state=present", changed=False)
        if params is None:
            args = dict(delete_section=True)
        elif isinstance(params, (dict, list)):
            names = list(params)
            if not all(isinstance(n, str) for n in names):
                module.fail_json(msg="params: parameter names must be text", changed=False)
            args = dict(delete=names)
        else:
            module.fail_json(msg="params must be a list of parameter names (or a "
                                 "dictionary) with state=absent", changed=False)
    if p["registry"] == "samba":
        samba(module, p["section"], args)
    socket_path = p["socket"] or DEFAULT_SOCKET
    client = Client(socket_path, timeout=30)
    try:
        res = client.conf_update(p["section"], check=module.check_mode, **args)
    except PyctdbError as exc:
        if exc.code == "EINVAL":
            module.fail_json(msg="section %s: %s" % (p["section"], exc.message),
                             changed=False)
        fail_from_error(module, exc, socket_path, p["config_dir"], changed=False)
    finally:
        client.close()
    after = res.get("after")
    result = dict(changed=bool(res["changed"]), section=res["section"],
                  params=after["params"] if after else [], exists=after is not None,
                  seqnum=res["seqnum"])
    if module._diff:
        before = res.get("before")
        result["diff"] = {"before": before["text"] if before else "",
                          "after": after["text"] if after else "",
                          "before_header": "registry [%s]" % res["section"],
                          "after_header": "registry [%s]" % res["section"]}
    module.exit_json(**result)


def samba(module, section, args):
    """The section of Samba's registry configuration (module_utils/samba_registry.py)."""
    net = samba_registry.NetConf(module.params["smb_conf"],
                                 module.get_bin_path("net", required=True))
    try:
        before = net.section(section)
        after = samba_registry.wanted(net, section, before, **args)
        changed = after != before
        if changed and not module.check_mode:
            samba_registry.apply(net, section, after)
            got = net.section(section)
            if got != after:
                module.fail_json(msg="section %s: Samba's registry has %r after the change, "
                                     "not %r" % (section, got, after), changed=True)
    except samba_registry.SambaRegistryError as exc:
        module.fail_json(msg="section %s: %s" % (section, exc.message), changed=False)
    result = dict(changed=changed, section=section, exists=after is not None,
                  params=samba_registry.parse_section(after) if after else [])
    if module._diff:
        result["diff"] = {"before": before or "", "after": after or "",
                          "before_header": "samba registry [%s]" % section,
                          "after_header": "samba registry [%s]" % section}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
