"""The local JSON API on the Unix socket: the first client front end."""
