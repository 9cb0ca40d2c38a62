# -*- coding: utf-8 -*-
# Copyright: (c) 2025, pyctdb authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Options and notes of every module that talks to the local agent
    (``extends_documentation_fragment: pyctdb.cluster.agent``); their argument_spec is
    ``agent_argument_spec()`` of module_utils/pyctdb_client.py."""

    DOCUMENTATION = r"""
options:
  socket:
    description:
      - Path of the agent's API socket on the target node.
      - When not given, the environment variable E(PYCTDB_SOCKET) of the module's process
        on the target, else the default.
    type: path
    default: /run/pyctdb/pyctdbd.socket
  config_dir:
    description:
      - The agent's configuration directory on the target; its C(pyctdb.conf) names the
        log file (C([logging] location = file:PATH)) that is shown when the agent is down.
    type: path
    default: /etc/pyctdb
notes:
  - The agent serves root only, so run the module with O(ignore:become=true) unless you
    connect as root.
  - Runs with the target's system Python and needs nothing but the standard library.
"""
