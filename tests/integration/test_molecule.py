"""Molecule's scenarios as tests: ``molecule test -s SCENARIO`` from the repository root,
on real containers with systemd as PID 1, for each scenario:

* ``default`` (molecule/default): three nodes from localhost/pyctdb-node:bookworm on the
  network pyctdb-molecule, deploys the cluster with playbooks/site.yml, checks
  idempotence, that the three nodes agree on one leader that alone holds the cluster
  lock, kills the agent on the leader and checks the failover, re-converges and checks
  again.
* ``failover`` (molecule/failover): three nodes fnode1..3 on pyctdb-molecule-failover with
  six public addresses, site.yml, then playbooks/failover_test.yml: every node x every
  fault (kill, stop, netcut, monitor, disable), timed against the limits, every address
  on exactly one healthy node after each fault and restore.
* ``samba`` (molecule/samba): three nodes snode1..3 from localhost/pyctdb-node-samba:bookworm
  (``scripts/build-node-image.sh --samba``) and an SMB client, sclient, on
  pyctdb-molecule-samba: site.yml with ``pyctdb_samba`` (Debian's smbd clustered on
  pyctdb), a share in Samba's registry configuration, idempotence; a file written
  through one public address is read through another; a node whose smbd stops becomes
  UNHEALTHY and its address moves, still serving the share.

Each always destroys its containers and network (also when a step fails).
A run that fails because the container engine failed (Molecule's connection to a
container, not a task of ours: ``ENGINE_FLAKES``) is run once more, from its start.

Engine: a Docker engine when one answers (DOCKER_HOST or the default socket), else
Podman through its Docker-compatible API (scripts/podman-api.sh). The test is skipped
only when there is neither. The node image is built first if missing
(scripts/build-node-image.sh). The whole output is streamed (visible with ``-s``) and
kept in ``tests/output/molecule-SCENARIO.log``.

Deselect with ``-m "not molecule"``: about 6 minutes for default, up to 15 for failover.
"""

import os
import shutil
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.dirname(sys.executable)
LOG = os.path.join(REPO, "tests", "output", "molecule-%s.log")

# Scenario -> the steps of its test_sequence that must each report success.
SCENARIOS = {
    "default": ("create", "prepare", "converge", "idempotence", "verify", "side_effect",
                "destroy"),
    "failover": ("create", "prepare", "converge", "verify", "destroy"),
    "samba": ("create", "prepare", "converge", "idempotence", "verify", "destroy"),
}
#: Scenario -> the arguments of scripts/build-node-image.sh for its image.
IMAGES = {"samba": ["--samba"]}

pytestmark = [pytest.mark.molecule, pytest.mark.timeout(3600)]


def _docker_answers(env):
    """Whether a Docker API (a real engine or Podman's) answers with ``env``."""
    try:
        import docker
    except ImportError:
        docker = None
    if docker is not None:
        try:
            client = docker.from_env(environment=env, timeout=10)
            try:
                client.ping()
                return True
            finally:
                client.close()
        except Exception:
            return False
    if shutil.which("docker", path=env.get("PATH")):
        return subprocess.run(["docker", "info"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=30).returncode == 0
    return False


def _engine_env():
    """The environment for Molecule: ``(env, description)``; skips the test when there
    is neither a Docker engine nor Podman."""
    env = dict(os.environ)
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    if _docker_answers(env):
        return env, "Docker API at %s" % env.get("DOCKER_HOST", "the default socket")
    if not shutil.which("podman"):
        pytest.skip("no Docker engine answers (DOCKER_HOST=%s) and podman is not installed "
                    "(scripts/setup-host.sh installs it)" % env.get("DOCKER_HOST", "unset"))
    # Podman: configure it and serve its Docker-compatible API, then use that.
    subprocess.run([os.path.join(REPO, "scripts", "podman-api.sh"), "start"], env=env,
                   check=True, timeout=120)
    out = subprocess.run([os.path.join(REPO, "scripts", "podman-api.sh"), "env"], env=env,
                         check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
    # "export DOCKER_HOST=unix:///run/podman/podman.sock"
    env["DOCKER_HOST"] = out.strip().split("DOCKER_HOST=", 1)[1].strip().strip("'\"")
    assert _docker_answers(env), (
        "Podman's Docker API does not answer at %s (see /var/log/podman-api.log)"
        % env["DOCKER_HOST"])
    return env, "Podman's Docker API at %s" % env["DOCKER_HOST"]



#: What a failure of the container engine itself looks like in Molecule's output (the
#: connection to a container, not a task of the role): such a run is tried once more.
ENGINE_FLAKES = (
    "Error while determining user and group ID of current user in container",
    "Error while fetching server API version",
    # an exec through the engine that returned no output at all (seen under load)
    "failed to resolve remote temporary directory",
)


def _run(cmd, env, log_path, scenario, engine):
    """Run Molecule, streaming its output to stdout and ``log_path``: ``(rc, lines,
    seconds)``."""
    lines = []
    start = time.monotonic()
    with open(log_path, "w") as log:
        log.write("# molecule test -s %s (%s)\n" % (scenario, engine))
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, universal_newlines=True, bufsize=1)
        try:
            for line in proc.stdout:
                lines.append(line)
                log.write(line)
                log.flush()
                sys.stdout.write(line)
                sys.stdout.flush()
            rc = proc.wait()
        except BaseException:
            # Interrupted (timeout, ^C): let Molecule destroy what it created.
            proc.terminate()
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    elapsed = time.monotonic() - start
    print("molecule test -s %s: exit %d after %.0fs" % (scenario, rc, elapsed), flush=True)
    return rc, lines, elapsed


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_molecule_scenario(scenario):
    log_path = LOG % scenario
    env, engine = _engine_env()
    molecule = os.path.join(VENV_BIN, "molecule")
    if not os.path.exists(molecule):
        molecule = shutil.which("molecule", path=env["PATH"])
    assert molecule, "molecule is not installed (scripts/setup-host.sh installs it)"

    build = subprocess.run([os.path.join(REPO, "scripts", "build-node-image.sh")]
                           + IMAGES.get(scenario, []), cwd=REPO,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True, timeout=1800)
    assert build.returncode == 0, "scripts/build-node-image.sh failed:\n" + build.stdout

    # Plain text: the log is read by people and by this test.
    env.update(NO_COLOR="1", PY_COLORS="0", ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    env.pop("MOLECULE_EPHEMERAL_DIRECTORY", None)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    cmd = [molecule, "test", "-s", scenario]
    print("\n$ molecule test -s %s   (%s; cwd %s; log %s)" % (scenario, engine, REPO, log_path),
          flush=True)
    rc, lines, elapsed = _run(cmd, env, log_path, scenario, engine)
    flake = rc != 0 and next((f for f in ENGINE_FLAKES if f in "".join(lines)), None)
    if flake:
        # The container engine, not pyctdb, failed a step (seen with Podman's API on a
        # loaded machine): run the whole scenario once more, from its start.
        print("molecule test -s %s: the engine failed (%r); running it once more"
              % (scenario, flake), flush=True)
        os.replace(log_path, log_path + ".engine-failure")
        rc, lines, elapsed = _run(cmd, env, log_path, scenario, engine)
    assert rc == 0, "molecule test -s %s failed (exit %d after %.0fs); full log: %s\n%s" % (
        scenario, rc, elapsed, log_path, "".join(lines[-150:]))
    # Every step of the sequence ran (none was missing or skipped by accident).
    text = "".join(lines)
    for step in SCENARIOS[scenario]:
        assert "%s: Executed: Successful" % step in text, (
            "step %s did not run successfully; full log: %s" % (step, log_path))
    if scenario == "failover":
        # The playbook's last word: every failover within its limit.
        assert "failovers, all within their limits" in text, (
            "failover_test.yml did not report its results; full log: %s" % log_path)
