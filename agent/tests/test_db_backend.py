"""The storage backend seam (server/db/backend.py): LMDB's Store implements it, every
abstract method states its contract, and the database components reach the storage only
through it (nothing LMDB-specific outside store.py and gate.py)."""

import ast
import inspect
import pathlib

import pytest

from pyctdb.errors import PyctdbError
from pyctdb.server.db import backend
from pyctdb.server.db.store import Store, StoreError

DB_DIR = pathlib.Path(backend.__file__).resolve().parent
COMPONENTS = ["databases.py", "migration.py", "transactions.py", "recovery.py",
              "vacuum.py", "maintenance.py"]


def test_store_is_a_storage_backend():
    assert issubclass(Store, backend.StorageBackend)
    assert StoreError is backend.StoreError and issubclass(StoreError, PyctdbError)
    assert not Store.__abstractmethods__


def test_every_abstract_method_states_its_contract():
    abstract = backend.StorageBackend.__abstractmethods__
    assert {"open", "close", "available", "create", "drop", "get", "items", "page",
            "count", "store", "modify", "apply", "replace_raw", "delete_where",
            "barrier"} <= abstract
    for name in abstract:
        assert inspect.getdoc(getattr(backend.StorageBackend, name)), name


def test_a_backend_missing_a_method_cannot_be_made():
    class Half(backend.StorageBackend):
        def open(self, wipe=False):
            pass

    with pytest.raises(TypeError):
        Half()


@pytest.mark.parametrize("name", COMPONENTS)
def test_components_use_nothing_lmdb_specific(name):
    tree = ast.parse((DB_DIR / name).read_text())
    bad = []
    for node in ast.walk(tree):
        own = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
            and node.value.id == "self"  # (a component's own run(), not Store.run)
        if isinstance(node, ast.Attribute) and not own and node.attr in (
                "env", "run", "handle", "handle_in", "wait_flag"):
            bad.append(f"{name}:{node.lineno} .{node.attr}")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(m == "lmdb" or m.startswith("lmdb.") for m in mods):
                bad.append(f"{name}:{node.lineno} imports lmdb")
    assert not bad, bad
