"""The pure decisions of the cluster, each tested without a network: node flags,
election, IP allocation, the takeover plan, record merge rules, the registry."""
