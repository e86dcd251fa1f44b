"""The zope.interface contracts between sealgate's core and its plugins.

Third parties write protocol and interceptor plugins against these; the
built-in ones implement exactly the same interfaces (docs/plugins.md).
"""

from zope.interface import Attribute, Interface


class IProtocolPlugin(Interface):
    """
    A wire protocol sealgate can proxy.  Discovered with
    C{twisted.plugin.getPlugins(IProtocolPlugin, twisted.plugins)}; a
    C{[[connections]]} table selects one with C{protocol = "<name>"}.
    """

    name = Attribute("The protocol's name as written in the config, e.g. 'postgres'.")

    def parseOptions(options, where):
        """
        Validate a connection's C{[connections.options]} table.

        @param options: the raw TOML table (a dict).
        @param where: a L{sealgate.config.Where} naming the file and the
            table, to build errors with C{where.error(key, message, fix)}.
        @return: any object; it is handed back as C{connection.options}.
        @raise sealgate.config.ConfigError: for anything wrong, naming the key
            and the fix.  Secrets (``password_env``...) are resolved here so a
            missing one fails at start-up.
        """

    def makeFactory(connection, gateway):
        """
        Build the listening factory for one connection.

        @param connection: a L{sealgate.config.ConnectionConfig}; its
            C{options} are what L{parseOptions} returned.
        @param gateway: an L{IGateway}: identity, sessions, chain, store.
        @return: an L{twisted.internet.interfaces.IProtocolFactory}.
        """

    def replay(frames, out, speed):
        """
        Render a recorded session for C{sealgate replay}.

        @param frames: iterable of L{sealgate.recording.Frame} in order.
        @param out: a binary file to write to.
        @param speed: None for no waiting, else a playback speed factor.
        """


class IGateway(Interface):
    """
    What a protocol plugin gets from the gateway: one place that turns a
    credential into an identity, and an identity into an audited, recorded
    session with its interceptor chain.
    """

    reactor = Attribute("The reactor; protocols never import it themselves.")
    config = Attribute("The current L{sealgate.config.GatewayConfig} (replaced whole on reload); "
                       "e.g. C{config.connections} to find listener siblings.")
    store = Attribute("The L{IRecordingStore}; protocols record through their session, "
                      "not here (C{store.auditEvent} for node-level events such as a failed login).")
    approvals = Attribute("The L{sealgate.approvals.Approvals} service: C{cancel(ticket, identity, "
                          "reason)} withdraws a held command's ticket (a postgres CancelRequest).")
    chain = Attribute("The current L{sealgate.chain.Chain}.")
    sessions = Attribute("Live sessions by id (a dict the gateway owns: read it, do not change it).")
    storePaused = Attribute("True while the store asks relaying to wait.")

    def authenticate(connection, credential, client, claimed=None):
        """
        Check a credential (OIDC token or API key) for a connection.

        @return: L{Deferred} firing with a L{sealgate.identity.Identity}, or
            failing with L{sealgate.identity.AuthenticationFailed} (whose
            message is safe to show the client).  Failures are audited with
            the reason and the claimed identity, never the credential.
        """

    def openSession(connection, identity, client, meta=None):
        """
        Start a session: access check (the chain's session-start hook),
        recording, the OPEN audit event.

        @return: an L{ISession}.
        @raise sealgate.session.SessionRefused: access denied or the store
            cannot record (message safe for the client).
        """

    def connectionsSharing(connection):
        """
        Listener sharing: the connections served by C{connection}'s
        listener (same protocol and listen endpoint, in file order, under
        the current config).  A protocol picks one per client (postgres by
        database name, ssh by user name).
        """

    def sessionEnded(session, reason):
        """Called by L{ISession.end}: the session leaves C{sessions}, its tickets are cancelled."""

    def pressureChanged(state, reason):
        """
        The store's pressure observer: "paused" pauses every live session's
        legs, "flowing" resumes them, "failed" ends each (L{ISession.fail}).
        """


class ISession(Interface):
    """
    One client session, and the core's steps a protocol calls: it has no
    other way to a client (docs/plugins.md).
    """

    id = Attribute("The session id (sorts by start time).")
    connection = Attribute("The L{sealgate.config.ConnectionConfig}.")
    identity = Attribute("The verified L{sealgate.identity.Identity}.")
    chain = Attribute("The session's L{sealgate.chain.SessionChain}: C{wantsCommand}, "
                      "C{wantsOutput}, C{masker} (an L{IMasker} or None).")
    recording = Attribute("Its L{ISessionRecording}.")
    abort = Attribute("Set by the protocol: C{abort(message)} closes the client in the "
                      "protocol's own words (drain timeout, store failure).")
    closeReason = Attribute("Set by the core before C{abort}: what the CLOSE leaf will say.")
    clientLeg = Attribute("The client's L{sealgate.flow.Leg} once attached, else None.")
    backendLeg = Attribute("The backend's L{sealgate.flow.Leg} once attached, else None.")

    def attach(client, backend=None):
        """Hand the core the legs it pauses for holds and for store pressure."""

    def decide(kind, text, details=None, *, rewritable=True, reported=False, hold=None):
        """The decision step: a L{sealgate.flow.Decision}, audited once."""

    def emit(data, *, channel=0, **context):
        """The output step: mask, output hooks, record; returns the bytes to send."""

    def send(transport, data, *, channel=0, **context):
        """C{emit}, then the fast write to C{transport}."""

    def received(data, channel=0):
        """Record client input as the client sent it."""

    def setOutputMasker(masker, channel=None):
        """Register the protocol's masker for typed output on a channel."""

    def audit(kind, /, **fields):
        """Seal an audit event for this session."""

    def fail(closeReason, message):
        """End the session in its protocol's words, sealed with C{closeReason}."""

    def end(reason="closed"):
        """End once: session-end hooks, CLOSE leaf; a L{Deferred} (None if ended)."""


class IInterceptor(Interface):
    """
    One link of the interceptor chain.  A plain object with methods named
    after the hooks it wants (mitmproxy-style); the chain calls only those it
    has, each declared by one of the interfaces below (provide the ones you
    implement, so C{verifyObject} checks them).  Each hook method takes a
    hook record from L{sealgate.chain.hooks} and returns a verdict from
    L{sealgate.chain.verdicts} (C{None} means continue).  An exception fails
    closed: a denial (or, for output, a refusal).

    An interceptor may also have C{bind(session)} returning a per-session
    view (asked once per session), and C{maskerFor(session)} returning the
    session's L{IMasker}.
    """

    name = Attribute("Unique name used in logs and audit events.")

    def appliesTo(session):
        """
        Whether this interceptor runs for this session (by connection and
        identity groups).  Asked once per session, so a session no rule
        touches pays nothing per message.
        """


class ISessionStartHook(IInterceptor):
    def sessionStart(hook):
        """C{SessionStart}: the access check; may L{Deny}."""


class ICommandHook(IInterceptor):
    def command(hook):
        """C{Command}: may L{Deny}, L{Hold} or L{Rewrite}."""


class IOutputHook(IInterceptor):
    def output(hook):
        """
        C{Output}: bytes on their way to a client, already masked when
        C{hook.context["masked"]}; may L{Rewrite} them or L{Deny} (the
        protocol then refuses to send them).
        """


class ISessionEndHook(IInterceptor):
    def sessionEnd(hook):
        """C{SessionEnd}; the verdict is ignored."""


class IMasker(Interface):
    """
    The session's masker (C{session.chain.masker}): what protocols with
    typed values call to build their output masker (L{ISession.setOutputMasker}).
    Every method fails closed with L{sealgate.masking.MaskingFailed}.
    """

    detectors = Attribute("The detectors in use (empty: only named columns and fields).")

    def maskText(text):
        """A text with every detected value redacted."""

    def maskBytes(data):
        """The same for bytes (UTF-8, undecodable bytes kept)."""

    def columnMasked(name):
        """Whether a column or field of that name is masked whole."""

    def maskValue(column, value):
        """One value of a column (masked whole if the column is named, else detected)."""

    def maskJson(obj):
        """A parsed JSON document with named fields and detected values redacted."""

    def streamMasker(maxHold=None):
        """
        A L{sealgate.masking.StreamMasker} for a byte stream split anywhere:
        C{feed(data)} returns what is safe to send and holds back a possible
        start of a value; C{flush()} returns the rest; C{pending} counts it.
        """


class IInterceptorPlugin(Interface):
    """
    A twisted.plugin that contributes an interceptor to every gateway.
    """

    name = Attribute("Plugin name.")
    order = Attribute("Position in the chain; lower runs first. Built-ins: "
                      "access 100, guardrail 200, approval 300, masking 400, audit 900.")

    def build(config, gateway):
        """
        @param config: the whole L{sealgate.config.GatewayConfig}.
        @param gateway: the L{IGateway}.
        @return: an L{IInterceptor}, or None to stay out of this gateway.
        """


class IRecordingStore(Interface):
    """
    The sealed store: per-session frame trees and one global append-only
    log per node (DESIGN.md, "Recording store").  Write methods never block:
    they queue, and a writer (the default store's is its own process)
    commits in batches.
    """

    def start():
        """
        Open (creating on first start), lock and recover the store.
        @return: L{Deferred} firing when ready.
        """

    def stop():
        """
        Flush everything, write a final checkpoint, release the lock.
        @return: L{Deferred}.
        """

    def healthy():
        """
        @return: C{None} when new sessions may be recorded, else a reason
            (e.g. the disk is full) as a string safe to show a client.
        """

    def pressure():
        """
        The store's backpressure signal.

        @return: C{None} while writes may flow; else why relaying must
            pause (or stop), as a string safe to show a client: "the
            recording store is restarting", "the disk is full", "the
            recording backlog is over max_unsealed", or the failure.
        """

    def addPressureObserver(fn):
        """
        Call C{fn(state, reason)} on the reactor thread at every change of
        L{pressure}: C{state} is C{"flowing"} (resume every leg), C{"paused"}
        (pause every leg) or C{"failed"} (end every live session in its
        protocol's words; they are sealed as "store failed").
        """

    def removePressureObserver(fn):
        """Stop calling C{fn}."""

    def openSession(sessionId, info):
        """
        Queue the OPEN log leaf and start a session tree.

        @param info: a dict (identity, connection, protocol, client,
            policy_hash, ...) stored in the OPEN record.
        @return: an L{ISessionRecording}.
        """

    def auditEvent(event):
        """
        Queue a node-level EVENT leaf (a dict) not tied to a session, such
        as a failed login.
        """


class ISessionRecording(Interface):
    """
    One session's recording.  Never blocks; never sees login secrets.
    """

    sessionId = Attribute("The session id.")

    def frame(direction, data, channel=0):
        """
        Record bytes as the client saw them.

        @param direction: L{sealgate.session.FROM_CLIENT} or
            L{sealgate.session.TO_CLIENT}.
        @param data: bytes (split into 16 KiB frames by the store).
        @param channel: protocol-defined channel number (SSH channel...).
        """

    def event(kind, fields):
        """
        Queue an audit EVENT leaf tied to this session (command, verdict,
        approval...).
        """

    def close(reason, stats):
        """
        Queue the CLOSE leaf with the final tree size and root.

        @return: L{Deferred} firing once the CLOSE is durable and signed.
        """
