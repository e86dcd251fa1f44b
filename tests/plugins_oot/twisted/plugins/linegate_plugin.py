"""Dropin for the out-of-tree 'line' protocol: one lazy line, as a third party writes it."""

from sealgate.plugins import LazyProtocolPlugin

line = LazyProtocolPlugin("line", "linegate")
