# -*- coding: utf-8 -*-
# Copyright: (c) 2025, pyctdb authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The filter pyctdb.cluster.nodes_list: the nodes file's list, worked out as the node role
does (roles/node/tasks/nodes.yml)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: nodes_list
short_description: Work out a pyctdb cluster's nodes list
version_added: 0.5.0
author:
  - pyctdb authors
description:
  - Returns the nodes list (the lines of the agent's C(nodes) file, in PNN order) as the
    role P(pyctdb.cluster.node#role) writes it, with the problems found and where the
    list came from. Nothing is raised for a problem of the inventory; it is listed in
    RV(_value.errors) for the caller to refuse.
  - With a non-empty explicit list (the role's C(pyctdb_nodes)), the list is that one;
    each entry is trimmed, and V(null) and the strings V(''), C(#), V(None) and V(null)
    become C(#), a deleted node.
  - Otherwise the list is derived from the hosts of the cluster group. A host's address
    is, the first one defined, its C(pyctdb__address) (the address the role fixed for a
    host of the play), its C(pyctdb_node_address), its fact C(default_ipv4.address); a
    host without one is an error. A host with C(pyctdb_pnn) is pinned to that line; the
    other hosts fill the free lines in the order of O(hosts), and the lines left over
    (gaps below the highest pinned PNN) are C(#). A C(pyctdb_pnn) that is not a
    non-negative integer and a PNN set for more than one host are errors.
positional: _input, hosts, hostvars, group
options:
  _input:
    description:
      - The explicit nodes list (C(pyctdb_nodes)). Empty or V(null) derives the list from
        O(hosts).
    type: list
    elements: raw
    required: true
  hosts:
    description:
      - The host names of the cluster group, in inventory order (C(groups[pyctdb_cluster_group])).
    type: list
    elements: str
    required: true
  hostvars:
    description:
      - The variables of every host of O(hosts), by host name (C(hostvars)). Per host,
        C(pyctdb__address), C(pyctdb_node_address), C(ansible_facts.default_ipv4.address)
        and C(pyctdb_pnn) are read; a host missing from it has no address.
    type: dict
    required: true
  group:
    description:
      - The name of the cluster group, for RV(_value.source).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: The nodes list the role would write for the group pyctdb
  ansible.builtin.debug:
    msg: >-
      {{ pyctdb_nodes | default([], true)
         | pyctdb.cluster.nodes_list(groups['pyctdb'] | default([]), hostvars, 'pyctdb') }}
  # node1 (pyctdb_pnn: 2) 10.89.5.11, node2 10.89.5.12, node3 10.89.5.13:
  # {"nodes": ["10.89.5.12", "10.89.5.13", "10.89.5.11"], "errors": [],
  #  "source": "groups[pyctdb]"}

- name: An explicit list (null is a deleted node)
  ansible.builtin.debug:
    msg: "{{ ['10.89.5.11', none, '10.89.5.13'] | pyctdb.cluster.nodes_list([], {}, 'pyctdb') }}"
  # {"nodes": ["10.89.5.11", "#", "10.89.5.13"], "errors": [], "source": "pyctdb_nodes"}

- name: Refuse a bad inventory
  vars:
    result: "{{ [] | pyctdb.cluster.nodes_list(groups['pyctdb'], hostvars, 'pyctdb') }}"
  ansible.builtin.assert:
    that: result.errors | length == 0
    fail_msg: "cannot work out the nodes list from {{ result.source }}: {{ result.errors | join('; ') }}"
"""

RETURN = r"""
_value:
  description: The nodes list, the problems found and where the list came from.
  type: dict
  contains:
    nodes:
      description:
        - One entry per line of the nodes file, in PNN order; C(#) is a deleted node.
        - A host without an address is listed with V('') (and an error).
      type: list
      elements: str
      sample: ["10.89.5.11", "#", "10.89.5.13"]
    errors:
      description:
        - The problems found, one sentence each; empty when the list can be used. Always
          empty for an explicit list.
      type: list
      elements: str
      sample:
        - "node3: no address known (not in this play and no pyctdb_node_address or facts for it)"
        - "node2: pyctdb_pnn -1 is not a non-negative integer"
        - "pyctdb_pnn 0 is set for more than one host: node1, node4"
    source:
      description: V(pyctdb_nodes) for an explicit list, else V(groups[GROUP]).
      type: str
      sample: groups[pyctdb]
"""

import re

from collections.abc import Mapping, Sequence

from jinja2 import Undefined

from ansible.errors import AnsibleFilterError, AnsibleUndefinedVariable

_MISSING = object()
#: Explicit entries (trimmed) that are a deleted node.
_DELETED = ('', '#', 'None', 'null')
#: A pyctdb_pnn, as the role's Jinja tested it (re.match: "$" also matches before a
#: final newline).
_PNN = re.compile(r'^[0-9]+$')


def _type_name(value):
    return type(value).__name__


def _is_list(value):
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _get(mapping, key):
    """``mapping[key]`` as ``mapping[key] | default(...)`` sees it in Jinja: ``_MISSING``
    when the key is absent or its value undefined. ``mapping`` may be a lazy
    HostVarsVars, whose values are templated when read."""
    if isinstance(mapping, Undefined) or not isinstance(mapping, Mapping):
        return _MISSING
    try:
        if key not in mapping:
            return _MISSING
        value = mapping[key]
    except (KeyError, AnsibleUndefinedVariable):
        return _MISSING
    if isinstance(value, Undefined):
        return _MISSING
    return value


def _host_vars(hostvars, host):
    """The variables of ``host``; ``{}`` when ``hostvars`` does not know it (checked
    first: Ansible's HostVars makes an undefined marker otherwise)."""
    try:
        if host not in hostvars:
            return {}
        hv = hostvars[host]
    except (KeyError, AnsibleUndefinedVariable):
        return {}
    return {} if isinstance(hv, Undefined) else hv


def _address(hv):
    """The first defined of pyctdb__address, pyctdb_node_address, the default IPv4
    address fact; stringified and trimmed ('' when none is defined)."""
    for key in ('pyctdb__address', 'pyctdb_node_address'):
        value = _get(hv, key)
        if value is not _MISSING:
            break
    else:
        value = _get(_get(_get(hv, 'ansible_facts'), 'default_ipv4'), 'address')
        if value is _MISSING:
            value = ''
    return str(value).strip()


def _explicit(nodes):
    out = []
    for entry in nodes:
        e = str(entry if entry is not None else '#').strip()
        out.append('#' if e in _DELETED else e)
    return {'nodes': out, 'errors': [], 'source': 'pyctdb_nodes'}


def _derived(hosts, hostvars, group):
    errors = []
    pinned = []  # (pnn, address, host)
    free = []  # (address, host)
    for h in hosts:
        hv = _host_vars(hostvars, h)
        addr = _address(hv)
        if not addr:
            errors.append('%s: no address known (not in this play and no '
                          'pyctdb_node_address or facts for it)' % h)
        pnn = _get(hv, 'pyctdb_pnn')
        if pnn is not _MISSING and pnn is not None and str(pnn).strip() != '':
            if not _PNN.match(str(pnn)):
                errors.append('%s: pyctdb_pnn %s is not a non-negative integer' % (h, pnn))
            else:
                pinned.append((int(str(pnn)), addr, h))
        else:
            free.append((addr, h))

    pnns = [p for p, _a, _h in pinned]
    seen = set()
    for p in pnns:
        if p in seen:
            continue
        seen.add(p)
        owners = [host for q, _a, host in pinned if q == p]
        if len(owners) > 1:
            errors.append('pyctdb_pnn %d is set for more than one host: %s'
                          % (p, ', '.join(owners)))

    count = max(len(pinned) + len(free), max(pnns) + 1 if pnns else 0)
    nodes = []
    k = 0
    for i in range(count):
        hit = [a for q, a, _h in pinned if q == i]
        if hit:
            nodes.append(hit[0])
        elif k < len(free):
            nodes.append(free[k][0])
            k += 1
        else:
            nodes.append('#')
    return {'nodes': nodes, 'errors': errors, 'source': 'groups[%s]' % group}


def nodes_list(nodes, hosts, hostvars, group):
    """The nodes list of a pyctdb cluster: ``{'nodes': [...], 'errors': [...],
    'source': '...'}``.

    ``nodes`` is the explicit list (``pyctdb_nodes``; empty or None derives it),
    ``hosts`` the host names of the cluster group in inventory order, ``hostvars`` their
    variables by host name (a dict or Ansible's lazy ``hostvars``), ``group`` the group's
    name. See DOCUMENTATION."""
    if nodes is not None and not _is_list(nodes):
        raise AnsibleFilterError(
            'nodes_list: the explicit nodes list (pyctdb_nodes) must be a list of addresses,'
            ' not %s %r' % (_type_name(nodes), nodes))
    if nodes:
        return _explicit(nodes)
    if hosts is None:
        hosts = []
    if not _is_list(hosts):
        raise AnsibleFilterError(
            'nodes_list: the hosts of the cluster group must be a list of host names, not %s'
            % _type_name(hosts))
    bad = [h for h in hosts if not isinstance(h, str)]
    if bad:
        raise AnsibleFilterError(
            'nodes_list: the hosts of the cluster group must be host names (strings), not %s %r'
            % (_type_name(bad[0]), bad[0]))
    if not isinstance(hostvars, Mapping):
        raise AnsibleFilterError(
            'nodes_list: hostvars must be a mapping of host name to variables (hostvars),'
            ' not %s' % _type_name(hostvars))
    if not isinstance(group, str):
        raise AnsibleFilterError(
            'nodes_list: the cluster group must be a group name (string), not %s'
            % _type_name(group))
    return _derived(hosts, hostvars, group)


class FilterModule(object):
    """pyctdb.cluster filters."""

    def filters(self):
        return {'nodes_list': nodes_list}
