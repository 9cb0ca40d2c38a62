#!/usr/bin/env python3
# Copyright: (c) 2025, pyctdb authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build the pyctdb agent wheel and fetch its runtime dependencies, on the controller.

Run by the pyctdb.cluster.node role (delegate_to: localhost, run_once) with the
controller's Python, so that the nodes never need a package index:

    build_wheels.py --source AGENT_DIR --cache DIR --target 3.11-x86_64 [--target ...]
                    [--requirement 'lmdb>=1.4' ...]

* The agent is built from a clean copy of AGENT_DIR (no stale build/ or egg-info) with
  SOURCE_DATE_EPOCH fixed, so the same sources give the same wheel. The cached wheel is
  only replaced when its content differs, so an unchanged agent reports "changed": false.
* For every target (node Python version and machine architecture) the wheel's own
  dependencies (Requires-Dist) plus the extra requirements are downloaded as binary wheels
  for that platform (pip download --only-binary=:all: --platform manylinux2014_ARCH
  --python-version X.Y --implementation cp), from the cache when it already has them,
  else from the package index the controller's pip is configured for.

Prints one JSON object: {"changed", "version", "agent_wheel", "targets": {TARGET:
{"wheels": [paths], "digest": sha256}}, "log": [...]}. Exits 1 with a message on error.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

#: 1980-01-01, the earliest time a zip file can store.
SOURCE_DATE_EPOCH = "315532800"
IGNORE = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "*.pyc",
                                ".pytest_cache", ".tox", ".venv", "tests", ".git")
LOG = []


def fail(msg):
    print(json.dumps({"failed": True, "msg": msg, "log": LOG}))
    sys.exit(1)


def run(argv, env=None):
    LOG.append(" ".join(argv))
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                       universal_newlines=True)
    if p.returncode != 0:
        LOG.append(p.stdout.strip()[-4000:])
    return p.returncode, p.stdout


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wheel_content(path):
    """The members of a wheel, without zip metadata such as timestamps."""
    with zipfile.ZipFile(path) as z:
        return sorted((i.filename, i.external_attr, z.read(i.filename)) for i in z.infolist())


def same_wheel(a, b):
    try:
        return wheel_content(a) == wheel_content(b)
    except (OSError, zipfile.BadZipFile):
        return False


def build_agent(source, outdir, pip_env):
    work = tempfile.mkdtemp(prefix="pyctdb-build-")
    try:
        src = os.path.join(work, "src")
        shutil.copytree(source, src, ignore=IGNORE)
        out = os.path.join(work, "out")
        env = dict(pip_env, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
        base = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                "-q", "-w", out, src]
        # Without build isolation when the controller's Python can build it (no index
        # needed); else let pip fetch the build backend into an isolated environment.
        rc, output = run(base[:4] + ["--no-build-isolation"] + base[4:], env)
        if rc != 0:
            shutil.rmtree(out, ignore_errors=True)
            rc, output = run(base, env)
        if rc != 0:
            fail("building the agent wheel from %s failed:\n%s" % (source, output.strip()))
        built = [f for f in os.listdir(out) if f.endswith(".whl")]
        if len(built) != 1:
            fail("expected one wheel from %s, got %s" % (source, built))
        name = built[0]
        changed = False
        os.makedirs(outdir, exist_ok=True)
        dest = os.path.join(outdir, name)
        if not (os.path.exists(dest) and same_wheel(dest, os.path.join(out, name))):
            shutil.copyfile(os.path.join(out, name), dest + ".tmp")
            os.replace(dest + ".tmp", dest)
            changed = True
        for old in os.listdir(outdir):
            if old.endswith(".whl") and old != name:
                os.unlink(os.path.join(outdir, old))
                changed = True
        return dest, changed
    finally:
        shutil.rmtree(work, ignore_errors=True)


def download(agent_wheel, requirements, target, cache, pip_env):
    """Wheels (agent first) a node of ``target`` ("X.Y-ARCH") needs."""
    pyver, _, arch = target.partition("-")
    if not pyver or not arch:
        fail("bad target %r (expected PYTHONVERSION-ARCH, e.g. 3.11-x86_64)" % target)
    depdir = os.path.join(cache, "deps", "cp%s-%s" % (pyver.replace(".", ""), arch))
    os.makedirs(depdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="pyctdb-download-")
    try:
        base = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
                "--only-binary=:all:", "--platform", "manylinux2014_%s" % arch,
                "--python-version", pyver, "--implementation", "cp", "-d", work,
                "--find-links", depdir, agent_wheel] + list(requirements)
        # From the cache alone first: no index needed when nothing changed.
        rc, _ = run(base[:4] + ["--no-index"] + base[4:], pip_env)
        if rc != 0:
            for f in os.listdir(work):
                os.unlink(os.path.join(work, f))
            rc, output = run(base, pip_env)
            if rc != 0:
                fail("downloading the agent's dependencies for Python %s on %s failed:\n%s"
                     % (pyver, arch, output.strip()))
        agent_name = os.path.basename(agent_wheel)
        wheels = [agent_wheel]
        for name in sorted(os.listdir(work)):
            if name == agent_name or not name.endswith(".whl"):
                continue
            dest = os.path.join(depdir, name)
            if not os.path.exists(dest):
                shutil.copyfile(os.path.join(work, name), dest)
            wheels.append(dest)
        digest = hashlib.sha256()
        for w in wheels:
            digest.update(("%s %s\n" % (os.path.basename(w), sha256(w))).encode())
        return {"wheels": wheels, "digest": digest.hexdigest()}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", required=True, help="the agent's source directory")
    ap.add_argument("--cache", required=True, help="wheel cache directory")
    ap.add_argument("--target", action="append", default=[],
                    help="PYTHONVERSION-ARCH of nodes, e.g. 3.11-x86_64 (repeatable)")
    ap.add_argument("--requirement", action="append", default=[],
                    help="extra requirement to install on the nodes (repeatable)")
    a = ap.parse_args()

    source = os.path.realpath(os.path.expanduser(a.source))
    if not os.path.isfile(os.path.join(source, "pyproject.toml")):
        fail("%s is not the pyctdb agent's source directory (no pyproject.toml); set "
             "pyctdb_agent_source" % source)
    cache = os.path.realpath(os.path.expanduser(a.cache))
    # One agent directory per source tree, so two checkouts do not fight over the cache.
    key = hashlib.sha1(source.encode()).hexdigest()[:12]
    pip_env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    pip_env.pop("PIP_REQUIRE_VIRTUALENV", None)
    try:
        agent_wheel, changed = build_agent(source, os.path.join(cache, "agent-" + key),
                                           pip_env)
    except OSError as exc:
        fail("cannot build the agent wheel: %s" % exc)
    name = os.path.basename(agent_wheel)
    version = name.split("-")[1] if name.count("-") >= 2 else None
    targets = {}
    for target in sorted(set(a.target)):
        targets[target] = download(agent_wheel, a.requirement, target, cache, pip_env)
    print(json.dumps({"changed": changed, "version": version, "agent_wheel": agent_wheel,
                      "targets": targets, "log": LOG}))


if __name__ == "__main__":
    main()
