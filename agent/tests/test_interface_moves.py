"""interface_moves: which hosted public addresses change interface (CTDB's updateip)."""

from pyctdb.common.config import PublicAddress
from pyctdb.rules.takeover import interface_moves


def pa(addr, *ifaces):
    return PublicAddress(addr, 24, tuple(ifaces))


def test_stays_while_its_interface_is_listed_and_up():
    conf = {"10.0.0.1": pa("10.0.0.1", "eth1", "eth0")}
    assert interface_moves({"10.0.0.1": "eth0"}, conf, {"eth0", "eth1"}) == []


def test_moves_when_no_longer_listed_or_down():
    conf = {"10.0.0.1": pa("10.0.0.1", "eth1"), "10.0.0.2": pa("10.0.0.2", "eth0", "eth2"),
            "10.0.0.10": pa("10.0.0.10", "eth2", "eth3")}
    assigned = {"10.0.0.10": "eth2", "10.0.0.2": "eth0", "10.0.0.1": "eth0"}
    # 10.0.0.1: eth0 no longer listed; 10.0.0.2: eth0 down, eth2 up; 10.0.0.10: eth2 up
    assert interface_moves(assigned, conf, {"eth1", "eth2"}) == [
        ("10.0.0.1", "eth0", "eth1"), ("10.0.0.2", "eth0", "eth2")]


def test_no_listed_interface_up_or_not_configured_leaves_it():
    conf = {"10.0.0.1": pa("10.0.0.1", "eth0", "eth1")}
    assigned = {"10.0.0.1": "eth0", "10.0.0.9": "eth0"}  # .9: being removed (delip)
    assert interface_moves(assigned, conf, set()) == []
