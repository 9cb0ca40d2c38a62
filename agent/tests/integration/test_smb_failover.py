"""An SMB copy survives the death of the node serving it (bench/smbfailover's pyctdb side,
once): three pyctdbd agents in network namespaces with public addresses, Debian's smbd
(clustering = yes, every address of its host) on each, one host directory as the share;
a client in the client namespace (pyctdb.testing.smbcopy, smbprotocol) writes a file
through the address of a node that is not the leader; that node's agent is SIGKILLed
(its addresses dropped, as the unit's ExecStopPost does). The address moves, the client
connects again and goes on where its last acknowledged write ended, and the file holds
every chunk in order. Then the same for a `moveip` (the old node's smbd, told by
CTDB_SRVID_RELEASE_IP, drops the client). Skipped without root, Samba or smbprotocol."""

import importlib.machinery
import importlib.util
import os
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def _bench():
    path = os.path.join(ROOT, "bench", "smbfailover")
    loader = importlib.machinery.SourceFileLoader("smbfailover", path)
    spec = importlib.util.spec_from_loader("smbfailover", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


smbfailover = _bench()
WHY = (smbfailover.available()
       or (None if shutil.which("pdbedit") else "Samba's tools are missing"))

pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(120),
    pytest.mark.skipif(WHY is not None, reason=f"bench/smbfailover: {WHY}"),
]


def test_an_smb_copy_resumes_after_its_node_dies(tmp_path):
    side = smbfailover.PyctdbSide(str(tmp_path / "lab"))
    try:
        r = side.run("kill")  # (raises unless resumed with the right content)
        assert r["error"] < r["resumed"], r
        assert "moved" in r, r
        assert r["resumed"] < 30, r
        assert r["size"] > 0
        m = side.run("moveip")
        assert m["resumed"] < 30, m
    finally:
        side.close()
