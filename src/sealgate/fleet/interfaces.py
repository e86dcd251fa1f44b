"""The contracts of the shared control state: each kind has an embedded and a PostgreSQL provider."""

from zope.interface import Attribute, Interface


class IAPIKeyStore(Interface):
    """API keys (L{sealgate.identity.apikeys}); blocking: call from a thread on the reactor."""

    def create(name, groups, expires_seconds=None):
        """Make a key and return it (the only time it is shown)."""

    def list():
        """Every key's L{sealgate.identity.apikeys.APIKeyInfo} (never the key or its hash)."""

    def revoke(name):
        """Revoke every unrevoked key of C{name}; @return: how many."""

    def verify(key):
        """The key's L{sealgate.identity.Identity}, or raise AuthenticationFailed."""

    def status(keyId):
        """C{"active"}, C{"expired"}, C{"revoked"} or C{"unknown"}."""

    def close():
        """Close this thread's connection."""


class ISSHKeyStore(Interface):
    """SSH public keys bound to identities (L{sealgate.identity.sshkeys}); blocking."""

    def add(identity, publicKey, groups=(), expires=None):
        """Bind an OpenSSH public key line to an identity."""

    def listKeys(identity=None):
        """The bindings, of one identity or all."""

    def revoke(which):
        """Revoke a key by fingerprint, or every key of an identity."""

    def status(fingerprint):
        """C{"active"}, C{"expired"}, C{"revoked"} or C{"unknown"}."""

    def lookup(blob):
        """The binding of a public key blob, or None."""


class ITicketBoard(Interface):
    """
    Where approval tickets are shared.  The node holding a command keeps
    its L{sealgate.approvals.Ticket} (and the Deferred releasing it); the
    board is what every node lists and decides on.  Methods return Deferreds.
    """

    node = Attribute("This node's name.")

    def start(changed):
        """Begin following decisions: C{changed(ticketId)} on the reactor, C{changed(None)} to resync."""

    def stop():
        """Stop following."""

    def publish(ticket):
        """Share a new ticket of this node; fails if it cannot be shared (then it is denied)."""

    def decide(ticketId, identity, action, reason, anyone=False):
        """
        Apply C{action} ("approve", "deny", "cancel") atomically, with the
        rules of L{sealgate.approvals}; fires with the ticket's dict, or
        fails with L{sealgate.approvals.ApprovalError}.
        """

    def settle(ticket):
        """Record a decision this node took itself (expiry, session end, stop) unless one exists; fires with the row's dict."""

    def get(ticketId):
        """The ticket's dict, or fail with ApprovalError(404)."""

    def list(everything=False):
        """The pending tickets' dicts (every kept ticket with C{everything}), all nodes."""

    def expireNode(node, reason):
        """Expire every pending ticket of C{node}; fires with their ids."""


class INodeRegistry(Interface):
    """Node leases.  Times are the caller's clock, in seconds; methods return Deferreds."""

    def renew(node, now, lease, admin=""):
        """Mark C{node} up until C{now + lease}."""

    def claimExpired(now, by):
        """Mark every up node whose lease ran out before C{now} down; fires with their names (each claimed once fleet-wide)."""

    def list(now):
        """Every node as a dict: name, state ("up"/"down"), renewed, lease, down_reason."""

    def leave(node, now):
        """A clean stop: C{node} is down without being declared dead."""


class ILoginStore(Interface):
    """Console logins that outlive a restart; blocking methods are not allowed here: Deferreds."""

    def save(login):
        """Store a new L{sealgate.admin.console.ConsoleLogin}."""

    def drop(token):
        """Forget a login (logout)."""

    def load(now):
        """Every unexpired login."""


class IBackoffCounters(Interface):
    """Failed-login counters shared by a fleet's nodes (L{sealgate.throttle}); Deferreds."""

    def read(keys, now, interval):
        """C{{(kind, key): (failures, last)}} of the given keys, failures older than C{interval} forgotten."""

    def record(keys, now, interval):
        """One more failure of each key at C{now} (a key quiet for C{interval} starts again at 1)."""

    def forget(keys):
        """A login of these identities worked: their counters end."""


class IDeliveryStore(Interface):
    """Notification deliveries that outlive a restart (L{sealgate.admin.notify}); Deferreds."""

    def save(delivery, ticket):
        """Record a new delivery and the ticket dict its messages are built from."""

    def update(delivery):
        """Record an attempt's outcome (state, attempts, error, next attempt)."""

    def pending():
        """This node's unfinished deliveries, as C{(Delivery, ticket dict)} pairs."""
