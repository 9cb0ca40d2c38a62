"""The daemon, pyctdbd: membership and leadership, recovery, failover, events,
messaging, databases and the local API, each a component with one job."""
