"""Test support: run real agents locally (see :mod:`pyctdb.testing.localcluster`)."""
