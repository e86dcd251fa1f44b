"""The control tables of a fleet's database, as ordered, idempotent schema steps."""

#: Component name in C{schema_version}.
COMPONENT = "control"

#: Step n brings the control tables to version n; only ever append.
STEPS = (
    """
    CREATE TABLE IF NOT EXISTS api_keys (
        key_id text PRIMARY KEY, name text NOT NULL, groups text NOT NULL,
        secret_sha256 bytea NOT NULL, created double precision NOT NULL,
        expires double precision, revoked double precision, last_used double precision);
    CREATE INDEX IF NOT EXISTS api_keys_name ON api_keys (name);
    CREATE TABLE IF NOT EXISTS ssh_keys (
        fingerprint text PRIMARY KEY, identity text NOT NULL, groups text NOT NULL,
        key_type text NOT NULL, key_blob bytea NOT NULL, comment text NOT NULL DEFAULT '',
        created double precision NOT NULL, expires double precision, revoked double precision);
    CREATE TABLE IF NOT EXISTS tickets (
        id text PRIMARY KEY, node text NOT NULL, state text NOT NULL,
        requester text NOT NULL, approvers text NOT NULL, needed integer NOT NULL,
        approvals text NOT NULL DEFAULT '[]', data text NOT NULL,
        created double precision NOT NULL, expires double precision NOT NULL,
        decided_by text, reason text NOT NULL DEFAULT '', decided double precision);
    CREATE INDEX IF NOT EXISTS tickets_pending ON tickets (node) WHERE state = 'pending';
    CREATE TABLE IF NOT EXISTS console_logins (
        token_sha256 bytea PRIMARY KEY, identity text NOT NULL, csrf text NOT NULL,
        expires double precision NOT NULL, method text NOT NULL, node text NOT NULL);
    CREATE TABLE IF NOT EXISTS login_backoff (
        kind text NOT NULL, key text NOT NULL, failures integer NOT NULL,
        last double precision NOT NULL, PRIMARY KEY (kind, key));
    CREATE TABLE IF NOT EXISTS nodes (
        name text PRIMARY KEY, state text NOT NULL, started double precision NOT NULL,
        renewed double precision NOT NULL, lease double precision NOT NULL,
        admin text NOT NULL DEFAULT '', down_at double precision, down_by text,
        down_reason text NOT NULL DEFAULT '');
    """,
    """
    CREATE TABLE IF NOT EXISTS notifications (
        id text PRIMARY KEY, node text NOT NULL, target text NOT NULL, ticket text NOT NULL,
        event text NOT NULL, state text NOT NULL, attempts integer NOT NULL,
        error text, created double precision NOT NULL, finished double precision,
        next_attempt double precision, body text NOT NULL);
    CREATE INDEX IF NOT EXISTS notifications_pending ON notifications (node)
        WHERE state = 'pending';
    """,
)

#: NOTIFY channels.
TICKETS_CHANNEL = "sealgate_tickets"
LOGINS_CHANNEL = "sealgate_logins"
