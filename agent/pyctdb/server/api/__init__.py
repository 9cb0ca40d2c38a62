"""The agent's client side: the node operations (operations.py) and the client front
ends that call them (frontend.py), the first being the local JSON API on the Unix socket
(server.py)."""
