#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2025, pyctdb authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: ctdb_db
short_description: Attach a clustered database of pyctdb; ensure keys of a persistent one
version_added: 0.2.0
description:
  - Attaches a clustered database on every node (C(pyctdb attach DB [persistent])) if it
    is not attached yet.
  - For a persistent database, ensures that keys are present with a value, or absent.
    All key changes of a task are one transaction, applied on every node at once; run it
    once per cluster (O(ignore:run_once=true)).
  - Keys and values are text (UTF-8).
extends_documentation_fragment:
  - pyctdb.cluster.agent
author:
  - pyctdb authors
options:
  name:
    description:
      - Name of the database, for example V(registry.tdb) (at most 255 characters of
        C(A-Z a-z 0-9 _ . + -)).
    type: str
    required: true
  persistent:
    description:
      - Whether the database is persistent (replicated on every node, changed by
        transactions) or volatile. An existing database of the other kind fails the
        task.
    type: bool
    default: false
  keys:
    description:
      - Keys that must have these values (persistent databases only).
    type: dict
  absent_keys:
    description:
      - Keys that must not exist (persistent databases only).
    type: list
    elements: str
attributes:
  check_mode:
    support: full
    description: Reports what would be attached and written without doing it.
  diff_mode:
    support: full
    description: Whether the database is attached, and the values of the keys named in
      O(keys) and O(absent_keys), before and after.
seealso:
  - module: pyctdb.cluster.ctdb_conf
"""

EXAMPLES = r"""
- name: A volatile database for an application's locks
  pyctdb.cluster.ctdb_db:
    name: app_locks.tdb
  run_once: true

- name: Persistent settings of an application
  pyctdb.cluster.ctdb_db:
    name: app_settings.tdb
    persistent: true
    keys:
      mode: active
      owner: ops
    absent_keys:
      - legacy
  run_once: true
"""

RETURN = r"""
name:
  description: The database's name.
  returned: success
  type: str
  sample: app_settings.tdb
db_id:
  description: The database's id (as C(getdbmap) shows it, in decimal); absent in check
    mode when the database is not attached yet.
  returned: success
  type: int
  sample: 2651286318
attached:
  description: Whether this task attached the database (or would, in check mode).
  returned: success
  type: bool
  sample: false
written:
  description: The keys stored by this task (or that would be).
  returned: success
  type: list
  elements: str
  sample: [mode]
deleted:
  description: The keys deleted by this task (or that would be).
  returned: success
  type: list
  elements: str
  sample: [legacy]
seqnum:
  description: The database's sequence number after the transaction (persistent
    databases, when keys were written).
  returned: when keys were written
  type: int
  sample: 4
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pyctdb.cluster.plugins.module_utils.pyctdb_client import (
    DEFAULT_SOCKET, agent_argument_spec, Client, PyctdbError, fail_from_error)

MAX_KEY = 511
MAX_VALUE = 512 * 1024


def _text(b):
    return None if b is None else b.decode("utf-8", "backslashreplace")


def check_params(module):
    """[(key bytes, value bytes or None)] wanted, or fail (nothing changed)."""
    p = module.params
    keys, absent = p["keys"] or {}, p["absent_keys"] or []
    if (keys or absent) and not p["persistent"]:
        module.fail_json(msg="keys and absent_keys are for persistent databases "
                             "(persistent: true)", changed=False)
    both = sorted(set(keys) & set(absent))
    if both:
        module.fail_json(msg="keys both in keys and absent_keys: %s" % ", ".join(both),
                         changed=False)
    want = []
    for k, v in list(keys.items()) + [(k, None) for k in absent]:
        kb = str(k).encode("utf-8")
        if not 1 <= len(kb) <= MAX_KEY:
            module.fail_json(msg="key %r: a key has 1 to %d bytes" % (k, MAX_KEY),
                             changed=False)
        if v is not None and isinstance(v, (dict, list)):
            module.fail_json(msg="keys: the value of %r must be text" % k, changed=False)
        vb = None if v is None else str(v).encode("utf-8")
        if vb is not None and len(vb) > MAX_VALUE:
            module.fail_json(msg="key %r: the value exceeds %d bytes" % (k, MAX_VALUE),
                             changed=False)
        want.append((kb, vb))
    return want


def main():
    module = AnsibleModule(
        argument_spec=dict(agent_argument_spec(),
            name=dict(type="str", required=True),
            persistent=dict(type="bool", default=False),
            keys=dict(type="dict", no_log=False),
            absent_keys=dict(type="list", elements="str", no_log=False),
        ),
        supports_check_mode=True,
    )
    want = check_params(module)
    p = module.params
    socket_path = p["socket"] or DEFAULT_SOCKET
    client = Client(socket_path, timeout=30)
    result = dict(name=p["name"], attached=False, written=[], deleted=[])
    try:
        run(module, client, want, result)
    except PyctdbError as exc:
        if exc.code == "EINVAL":
            module.fail_json(msg="database %s: %s" % (p["name"], exc.message),
                             changed=result["attached"], **result)
        fail_from_error(module, exc, socket_path, p["config_dir"],
                        changed=result["attached"], **result)
    finally:
        client.close()


def run(module, client, want, result):
    p = module.params
    entry = client.database(p["name"])
    if entry is not None and bool(entry.get("persistent")) != p["persistent"]:
        module.fail_json(msg="database %s is attached as a %s database, not %s"
                         % (p["name"], "persistent" if entry["persistent"] else "volatile",
                            "persistent" if p["persistent"] else "volatile"), changed=False)
    before = {k: (client.pfetch(p["name"], k) if entry is not None else None)
              for k, _v in want}
    writes = [(k, v) for k, v in want if before[k] != v]
    if entry is None:
        if not module.check_mode:
            res = client.attach(p["name"], p["persistent"])
            result["db_id"] = res["db_id"]
        result["attached"] = True
    else:
        result["db_id"] = entry["db_id"]
    if writes and not module.check_mode:
        result["seqnum"] = client.ptrans(p["name"], writes)["seqnum"]
    result["written"] = [_text(k) for k, v in writes if v is not None]
    result["deleted"] = [_text(k) for k, v in writes if v is None]
    result["changed"] = bool(result["attached"] or writes)
    if module._diff:
        after = dict(before)
        after.update(writes)
        result["diff"] = {
            "before": {"attached": entry is not None,
                       "keys": {_text(k): _text(v) for k, v in before.items()}},
            "after": {"attached": True, "persistent": p["persistent"],
                      "keys": {_text(k): _text(v) for k, v in after.items()}},
            "before_header": "database %s" % p["name"],
            "after_header": "database %s" % p["name"]}
        if entry is not None:
            result["diff"]["before"]["persistent"] = bool(entry["persistent"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
