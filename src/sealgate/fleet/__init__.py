"""Fleet mode's shared control state: one interface per kind, an embedded and a PostgreSQL backend.

Keys (L{sealgate.fleet.keys}), approval tickets (L{sealgate.fleet.tickets}),
console logins (L{sealgate.fleet.logins}) and node leases
(L{sealgate.fleet.nodes}); the contracts are in L{sealgate.fleet.interfaces},
the tables in L{sealgate.fleet.schema}.
"""
