"""The command-line tools on top of the client library: ``pyctdb`` and ``pyctdb ipalloc``."""
