"""The filter pyctdb.cluster.nodes_list (plugins/filter/nodes_list.py): the nodes list the
node role writes, from an explicit list or from the cluster group's hosts, with plain
dicts as hostvars and with Ansible's own lazy HostVars over a real inventory."""

from collections.abc import Mapping

import pytest
import yaml
from jinja2 import Undefined

from ansible.errors import AnsibleFilterError, AnsibleUndefinedVariable

from ansible_collections.pyctdb.cluster.plugins.filter.nodes_list import (
    FilterModule, nodes_list)

NO_ADDR = "%s: no address known (not in this play and no pyctdb_node_address or facts for it)"


def derive(hostvars, hosts=None, group="pyctdb"):
    """nodes_list of the hosts of ``hostvars`` (in its order) without an explicit list."""
    return nodes_list([], list(hostvars) if hosts is None else hosts, hostvars, group)


def addr(a, **kw):
    return dict(pyctdb_node_address=a, **kw)


def test_filter_is_registered():
    assert FilterModule().filters() == {"nodes_list": nodes_list}


# --- the explicit list ---------------------------------------------------------------

def test_explicit_list_entries():
    r = nodes_list(["10.0.0.1", None, "", " # ", "None", "null", " 10.0.0.7 ", 5, True,
                    "#x", "NULL", "#"], ["h1"], {"h1": addr("10.9.9.9")}, "pyctdb")
    assert r == {"nodes": ["10.0.0.1", "#", "#", "#", "#", "#", "10.0.0.7", "5", "True",
                           "#x", "NULL", "#"],
                 "errors": [], "source": "pyctdb_nodes"}


def test_explicit_list_ignores_the_group():
    # Problems of the group (no address, a bad or duplicate pnn) do not matter then.
    hv = {"h1": {}, "h2": addr("10.0.0.2", pyctdb_pnn="x"),
          "h3": addr("10.0.0.3", pyctdb_pnn=0), "h4": addr("10.0.0.4", pyctdb_pnn=0)}
    r = nodes_list(("10.0.0.1",), list(hv), hv, "pyctdb")
    assert r == {"nodes": ["10.0.0.1"], "errors": [], "source": "pyctdb_nodes"}
    # Nor their types: the group is not looked at.
    assert nodes_list(["a"], "not a list", None, None)["nodes"] == ["a"]


@pytest.mark.parametrize("empty", [[], None, ()])
def test_empty_explicit_list_derives_from_the_group(empty):
    hv = {"h1": addr("10.0.0.1"), "h2": addr("10.0.0.2")}
    assert nodes_list(empty, ["h1", "h2"], hv, "mygroup") == {
        "nodes": ["10.0.0.1", "10.0.0.2"], "errors": [], "source": "groups[mygroup]"}


# --- derived from the group ----------------------------------------------------------

def test_group_in_inventory_order_addresses_trimmed():
    hv = {"n3": addr(" 10.0.0.3 "), "n1": addr("10.0.0.1"), "n2": addr(17)}
    assert derive(hv) == {"nodes": ["10.0.0.3", "10.0.0.1", "17"], "errors": [],
                          "source": "groups[pyctdb]"}
    # Only the listed hosts count, in the order listed.
    assert derive(hv, hosts=["n2", "n1"])["nodes"] == ["17", "10.0.0.1"]


def test_address_precedence():
    facts = {"default_ipv4": {"address": "192.0.2.9"}}
    hv = {
        # the role's fixed address wins over pyctdb_node_address and the facts
        "a": {"pyctdb__address": "10.0.0.1", "pyctdb_node_address": "10.0.9.1",
              "ansible_facts": facts},
        # then pyctdb_node_address
        "b": {"pyctdb_node_address": "10.0.0.2", "ansible_facts": facts},
        # then the default IPv4 address fact
        "c": {"ansible_facts": facts},
        # defined wins even when empty (no fallback to the next one): no address
        "d": {"pyctdb__address": "", "pyctdb_node_address": "10.0.0.4"},
        "e": {"pyctdb_node_address": "  ", "ansible_facts": facts},
    }
    assert derive(hv) == {"nodes": ["10.0.0.1", "10.0.0.2", "192.0.2.9", "", ""],
                          "errors": [NO_ADDR % "d", NO_ADDR % "e"],
                          "source": "groups[pyctdb]"}


@pytest.mark.parametrize("hostvars", [
    {"h": {}},
    {"h": {"ansible_facts": {}}},
    {"h": {"ansible_facts": {"default_ipv4": {}}}},  # a host without a default route
    {"h": {"ansible_facts": {"default_ipv4": {"address": ""}}}},
    {"h": {"ansible_facts": "garbage"}},
    {"h": {"pyctdb_node_address": ""}},
    {"h": {"pyctdb_node_address": Undefined()}},
    {"h": Undefined()},
    {},  # the host is not in hostvars at all
], ids=["nothing", "no-facts", "no-default-route", "empty-fact", "bad-facts", "empty",
        "undefined", "undefined-host", "unknown-host"])
def test_missing_address(hostvars):
    assert derive(hostvars, hosts=["h"]) == {"nodes": [""], "errors": [NO_ADDR % "h"],
                                             "source": "groups[pyctdb]"}


def test_null_address_is_the_string_none():
    # As the role's Jinja did: ``None | string`` (a null pyctdb_node_address of a host
    # outside the play; a host of the play gets '' from the role's own task).
    assert derive({"h": addr(None)}) == {"nodes": ["None"], "errors": [],
                                         "source": "groups[pyctdb]"}


def test_pinned_free_and_gaps():
    hv = {"q1": addr("10.0.1.1", pyctdb_pnn=3), "q2": addr("10.0.1.2"),
          "q3": addr("10.0.1.3", pyctdb_pnn=0), "q4": addr("10.0.1.4", pyctdb_pnn="6"),
          "q5": addr("10.0.1.5")}
    # 0 q3 pinned, 1 q2 free, 2 q5 free, 3 q1 pinned, 4-5 gaps, 6 q4 pinned
    assert derive(hv) == {"nodes": ["10.0.1.3", "10.0.1.2", "10.0.1.5", "10.0.1.1", "#",
                                    "#", "10.0.1.4"],
                          "errors": [], "source": "groups[pyctdb]"}


def test_free_hosts_after_the_highest_pinned_pnn():
    hv = {"a": addr("10.0.0.1"), "b": addr("10.0.0.2", pyctdb_pnn=0),
          "c": addr("10.0.0.3"), "d": addr("10.0.0.4")}
    assert derive(hv)["nodes"] == ["10.0.0.2", "10.0.0.1", "10.0.0.3", "10.0.0.4"]


def test_a_removed_pinned_node_leaves_a_deleted_line():
    # docs/collection.md: node2 (PNN 1) removed from the inventory.
    hv = {"node1": addr("10.89.5.11", pyctdb_pnn=0), "node3": addr("10.89.5.13", pyctdb_pnn=2)}
    assert derive(hv)["nodes"] == ["10.89.5.11", "#", "10.89.5.13"]


@pytest.mark.parametrize("pnn,line", [(2, 2), ("2", 2), ("002", 2), ("2\n", 2), (0, 0)])
def test_pnn_forms(pnn, line):
    r = derive({"p": addr("10.0.0.9", pyctdb_pnn=pnn)})
    assert r["errors"] == []
    assert r["nodes"] == ["#"] * line + ["10.0.0.9"]


@pytest.mark.parametrize("pnn", [None, "", "  ", Undefined()])
def test_empty_pnn_is_free(pnn):
    r = derive({"a": addr("10.0.0.1", pyctdb_pnn=1), "b": addr("10.0.0.2", pyctdb_pnn=pnn)})
    assert r == {"nodes": ["10.0.0.2", "10.0.0.1"], "errors": [], "source": "groups[pyctdb]"}


def test_bad_pnns():
    hv = {"b1": addr("10.0.3.1", pyctdb_pnn=-1), "b2": addr("10.0.3.2", pyctdb_pnn="x"),
          "b3": addr("10.0.3.3", pyctdb_pnn=True), "b4": addr("10.0.3.4", pyctdb_pnn=1.5),
          "b5": addr("10.0.3.5", pyctdb_pnn=" 3"), "b6": addr("10.0.3.6", pyctdb_pnn=[1]),
          "ok": addr("10.0.3.7")}
    # Hosts with a bad pnn are left out of the list (and reported).
    assert derive(hv) == {
        "nodes": ["10.0.3.7"],
        "errors": ["b1: pyctdb_pnn -1 is not a non-negative integer",
                   "b2: pyctdb_pnn x is not a non-negative integer",
                   "b3: pyctdb_pnn True is not a non-negative integer",
                   "b4: pyctdb_pnn 1.5 is not a non-negative integer",
                   "b5: pyctdb_pnn  3 is not a non-negative integer",
                   "b6: pyctdb_pnn [1] is not a non-negative integer"],
        "source": "groups[pyctdb]"}


def test_duplicate_pnns():
    hv = {"d1": addr("10.0.2.1", pyctdb_pnn=0), "d2": addr("10.0.2.2"),
          "d3": addr("10.0.2.3", pyctdb_pnn="0"), "d4": addr("10.0.2.4", pyctdb_pnn=2),
          "d5": addr("10.0.2.5", pyctdb_pnn="002"), "d6": addr("10.0.2.6", pyctdb_pnn=0)}
    # The first host of a pnn gets the line; the list is as long as the hosts.
    assert derive(hv) == {
        "nodes": ["10.0.2.1", "10.0.2.2", "10.0.2.4", "#", "#", "#"],
        "errors": ["pyctdb_pnn 0 is set for more than one host: d1, d3, d6",
                   "pyctdb_pnn 2 is set for more than one host: d4, d5"],
        "source": "groups[pyctdb]"}


def test_errors_in_host_order_then_duplicates():
    hv = {"a": {"pyctdb_pnn": 1}, "b": addr("10.0.0.2", pyctdb_pnn="no"),
          "c": addr("10.0.0.3", pyctdb_pnn=1), "d": {}}
    assert derive(hv) == {
        "nodes": ["", "", "#"],
        "errors": [NO_ADDR % "a", "b: pyctdb_pnn no is not a non-negative integer",
                   NO_ADDR % "d", "pyctdb_pnn 1 is set for more than one host: a, c"],
        "source": "groups[pyctdb]"}


@pytest.mark.parametrize("hosts", [[], None])
def test_empty_group(hosts):
    assert nodes_list([], hosts, {}, "empty") == {"nodes": [], "errors": [],
                                                  "source": "groups[empty]"}


def test_lazy_mapping_is_read_by_key_only():
    """A HostVarsVars-like mapping: values are 'templated' when read, a value that cannot
    be (an undefined variable) raises; iterating it is not needed."""

    class Lazy(Mapping):
        def __init__(self, data):
            self.data = data
            self.read = []

        def __getitem__(self, key):
            self.read.append(key)
            value = self.data[key]
            if value == "{{ undefined }}":
                raise AnsibleUndefinedVariable("'undefined' is undefined")
            return value.replace("{{ n }}", "5") if isinstance(value, str) else value

        def __contains__(self, key):
            return key in self.data

        def __iter__(self):
            raise AssertionError("iterated")

        def __len__(self):
            raise AssertionError("len")

    good = Lazy({"pyctdb_node_address": "10.0.0.{{ n }}", "pyctdb_pnn": 1,
                 "unrelated": "{{ undefined }}"})
    bad = Lazy({"pyctdb__address": "{{ undefined }}",
                "ansible_facts": {"default_ipv4": {"address": "192.0.2.1"}}})
    r = nodes_list([], ["good", "bad"], {"good": good, "bad": bad}, "pyctdb")
    # an undefined pyctdb__address falls back, as `default` did
    assert r == {"nodes": ["192.0.2.1", "10.0.0.5"], "errors": [], "source": "groups[pyctdb]"}
    assert "unrelated" not in good.read


def test_with_ansible_hostvars(tmp_path):
    """Ansible's own lazy HostVars over a real inventory (templated values, hosts it does
    not know)."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.hostvars import HostVars
    from ansible.vars.manager import VariableManager

    inv_file = tmp_path / "inventory.yml"
    inv_file.write_text(yaml.safe_dump({"cluster": {"hosts": {
        "n1": {"pyctdb_node_address": "{{ '10.0.7.' ~ 1 }}", "pyctdb_pnn": 2},
        "n2": {"pyctdb_node_address": "10.0.7.2"},
        "n3": {"pyctdb_node_address": "{{ no_such_variable }}"},
        "n4": {"pyctdb_node_address": "10.0.7.4", "pyctdb_pnn": "{{ 1 + 2 }}"},
    }}}))
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[str(inv_file)])
    hostvars = HostVars(inventory=inventory,
                        variable_manager=VariableManager(loader=loader, inventory=inventory),
                        loader=loader)
    hosts = [h.name for h in inventory.groups["cluster"].get_hosts()] + ["not-in-inventory"]
    assert nodes_list([], hosts, hostvars, "cluster") == {
        "nodes": ["10.0.7.2", "", "10.0.7.1", "10.0.7.4", ""],
        "errors": [NO_ADDR % "n3", NO_ADDR % "not-in-inventory"],
        "source": "groups[cluster]"}


# --- wrong input types ---------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (("10.0.0.1,10.0.0.2", [], {}, "g"),
     "the explicit nodes list (pyctdb_nodes) must be a list of addresses, not str"),
    (({"a": 1}, [], {}, "g"),
     "the explicit nodes list (pyctdb_nodes) must be a list of addresses, not dict"),
    ((3, [], {}, "g"),
     "the explicit nodes list (pyctdb_nodes) must be a list of addresses, not int"),
    (([], "h1", {}, "g"),
     "the hosts of the cluster group must be a list of host names, not str"),
    (([], {"h1": {}}, {}, "g"),
     "the hosts of the cluster group must be a list of host names, not dict"),
    (([], ["h1", 2], {}, "g"),
     "the hosts of the cluster group must be host names (strings), not int 2"),
    (([], ["h1"], [{"pyctdb_node_address": "10.0.0.1"}], "g"),
     "hostvars must be a mapping of host name to variables (hostvars), not list"),
    (([], ["h1"], None, "g"),
     "hostvars must be a mapping of host name to variables (hostvars), not NoneType"),
    (([], ["h1"], {}, None),
     "the cluster group must be a group name (string), not NoneType"),
])
def test_wrong_types(args, message):
    with pytest.raises(AnsibleFilterError) as e:
        nodes_list(*args)
    assert str(e.value).startswith("nodes_list: " + message)
