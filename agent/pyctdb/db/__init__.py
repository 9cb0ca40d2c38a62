"""Clustered databases on LMDB (see docs/databases.md)."""
