# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pyctdb authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Samba's registry configuration (``net conf``), clustered through pyctdb: one section
read, its wanted state computed by Samba itself, and replaced in one transaction.

Samba stores a parameter under its canonical name (``writeable = yes`` is stored as
``read only = no``), so the wanted state is not compared as the user wrote it: it is
made in a scratch registry (a private ``net`` configuration with ``clustering = no``,
in a temporary directory) from the section as it is now and the changes asked, and
read back. The cluster's section is changed only if that differs, with ``net conf
import FILE SECTION`` (the section replaced in one transaction, on every node through
pyctdb) or ``net conf delshare``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shutil
import subprocess
import tempfile


class SambaRegistryError(Exception):
    """A ``net conf`` command failed (``message`` says which and why)."""

    def __init__(self, message):
        super(SambaRegistryError, self).__init__(message)
        self.message = message


def parse_section(text):
    """``[(name, value)]`` of ``net conf showshare`` output (after the ``[section]``
    line, each ``\\tname = value``)."""
    out = []
    for line in text.splitlines()[1:]:
        if "=" in line:
            name, _, value = line.strip().partition("=")
            out.append([name.strip(), value.strip()])
    return out


def as_text(value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


class NetConf(object):
    """``net conf`` with the configuration file ``smb_conf`` (``net``: its path)."""

    def __init__(self, smb_conf, net="net", timeout=60):
        self.smb_conf = smb_conf
        self.net = net
        self.timeout = timeout

    def run(self, *args, **kw):
        cmd = [self.net, "-s", self.smb_conf, "conf"] + list(args)
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True, timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SambaRegistryError("%s: %s" % (" ".join(cmd), exc))
        if p.returncode != 0 and not kw.get("ok_if_missing"):
            raise SambaRegistryError("%s failed (exit %d): %s" % (
                " ".join(cmd), p.returncode, (p.stderr or p.stdout).strip()))
        return p

    def section(self, name):
        """The section's ``net conf showshare`` text, or None if it does not exist."""
        p = self.run("showshare", name, ok_if_missing=True)
        if p.returncode != 0:
            if "NO_SUCH_SERVICE" in (p.stdout + p.stderr):
                return None
            raise SambaRegistryError("net conf showshare %s failed: %s" % (
                name, (p.stderr or p.stdout).strip()))
        return p.stdout


class Scratch(object):
    """A private, unclustered registry in a temporary directory (``with``)."""

    def __init__(self, net="net"):
        self.net = net
        self.dir = None

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="pyctdb-netconf-")
        for sub in ("lock/msg.lock", "state", "cache", "private", "run"):
            os.makedirs(os.path.join(self.dir, sub))
        conf = os.path.join(self.dir, "smb.conf")
        with open(conf, "w") as f:
            f.write("[global]\nclustering = no\nlock directory = {0}/lock\n"
                    "state directory = {0}/state\ncache directory = {0}/cache\n"
                    "private dir = {0}/private\npid directory = {0}/run\n".format(self.dir))
        return NetConf(conf, self.net)

    def __exit__(self, *exc):
        shutil.rmtree(self.dir, ignore_errors=True)


def wanted(cluster, section, current, set_params=None, delete=None, exclusive=False,
           delete_section=False):
    """The section's text as Samba would store it after the change (None: no section),
    made in a scratch registry from ``current`` (the cluster's text, or None)."""
    if delete_section or (current is None and not set_params):
        return None
    with Scratch(cluster.net) as scratch:
        if current is not None and not exclusive:
            path = os.path.join(os.path.dirname(scratch.smb_conf), "current.conf")
            with open(path, "w") as f:
                f.write(current)
            scratch.run("import", path, section)
        # (else the scratch has no such section: setparm makes it)
        for name, value in (set_params or {}).items():
            scratch.run("setparm", section, name, as_text(value))
        for name in delete or ():
            scratch.run("delparm", section, name, ok_if_missing=True)
        return scratch.section(section)


def apply(cluster, section, text):
    """Make the cluster's section ``text`` (None: removed), in one transaction."""
    if text is None:
        cluster.run("delshare", section)
        return
    fd, path = tempfile.mkstemp(prefix="pyctdb-netconf-", suffix=".conf")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        cluster.run("import", path, section)
    finally:
        os.unlink(path)
