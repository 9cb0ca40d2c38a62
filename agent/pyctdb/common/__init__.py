"""Shared by every part: configuration files, tunables, logging set-up."""
