"""The command-line tools on top of the client library: ``pyctdb`` (cli.py; its commands
registered in a table per module, commands.py: cluster_commands, messaging_commands,
db_commands, conf_commands) and ``pyctdb ipalloc`` (ipalloc.py)."""
