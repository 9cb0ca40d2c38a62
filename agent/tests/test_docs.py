"""The reference documents list what the code has: every local API command in
docs/api.md, every node-to-node control in docs/protocol.md."""

import ast
import pathlib
import re
from types import SimpleNamespace

from pyctdb.server.api.operations import NodeOperations
from pyctdb.server.api.server import ApiServer

AGENT_SRC = pathlib.Path(__file__).resolve().parent.parent / "pyctdb"
DOCS = AGENT_SRC.parent.parent / "docs"


def _registered_controls():
    """The ops registered in any ``control_handlers`` of the agent's code:
    ``x.control_handlers = {...}``, ``x.control_handlers["op"] = ...`` and
    ``x.control_handlers.update({...})``."""
    ops = set()

    def is_handlers(node):
        return isinstance(node, ast.Attribute) and node.attr == "control_handlers"

    def keys(d):
        return {k.value for k in d.keys if isinstance(k, ast.Constant)}
    for path in AGENT_SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if is_handlers(t) and isinstance(node.value, ast.Dict):
                        ops |= keys(node.value)
                    if (isinstance(t, ast.Subscript) and is_handlers(t.value)
                            and isinstance(t.slice, ast.Constant)):
                        ops.add(t.slice.value)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "update" and is_handlers(node.func.value)):
                for a in node.args:
                    if isinstance(a, ast.Dict):
                        ops |= keys(a)
    return ops


def test_protocol_md_documents_every_control():
    ops = _registered_controls()
    assert {"ping", "admin", "take_ip", "release_ip", "ipreallocate"} <= ops
    text = (DOCS / "protocol.md").read_text()
    table = text[text.index("### Controls"):]
    documented = set(re.findall(r"^\| `(\w+)` \| `\{", table, re.M))  # (not the header)
    assert documented == ops


def test_api_md_documents_every_command():
    api = ApiServer("/nonexistent", NodeOperations(SimpleNamespace(control_handlers={}), None))
    text = (DOCS / "api.md").read_text()
    documented = set()
    for heading in re.findall(r"^### (.+)$", text, re.M):
        documented |= set(re.findall(r"`(\w+)`", heading))
    assert documented == set(api.commands)
