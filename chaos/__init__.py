"""The chaos run: real instances, random real faults, and a checker of the guarantees.

``python -m chaos --duration 300`` (``make chaos``) runs several instances
of several groups against an embedded PostgreSQL, injects kills, freezes,
silent partitions, backend terminations and server restarts, and then checks
from what the instances themselves recorded that no two of them acted as
leader of a group at once, that terms only grew and fencing held, and that a
leader was back within the bound after every fault.
"""
