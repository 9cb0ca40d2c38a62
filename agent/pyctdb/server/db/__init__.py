"""The clustered databases of one node and their LMDB storage backend."""
