"""The one bus helper: connect to NATS, create Signalfire's streams and KV buckets, and read
a bucket whole.

Every service connects through :func:`connect` (reconnecting forever, with credentials and
TLS from :class:`NatsConfig`) and calls :func:`ensure_streams` at start; creating streams is
idempotent and converges a stream whose settings changed. What a service loads from a bucket
(alert states, leases, mirrors) it lists with :func:`bucket_entries` or :func:`watch_listed`,
and follows with :func:`watch`.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import dataclasses
import logging
import ssl
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import (
    AuthorizationError,
    ConnectionReconnectingError,
    NoRespondersError,
    StaleConnectionError,
)
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from signalfire.buspolicy import inbox_prefix
from signalfire.config import ConfigError, Duration
from signalfire.log import Throttle
from signalfire.subjects import Subjects

log = logging.getLogger("signalfire.bus")


class NatsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How a service reaches NATS. ``SF_NATS_URL`` overrides ``url``."""

    url: str = "nats://127.0.0.1:4222"
    #: The cluster's other servers (``SF_NATS_SERVERS``, a comma-separated list); the client
    #: connects to any of ``url`` and these and moves to another when its server goes away.
    servers: list[str] = []
    prefix: str = "sf"
    #: A ``.creds`` file (JWT + NKey) for decentralised auth.
    credentials: str | None = None
    user: str | None = None
    password: str | None = None
    #: A file holding the password (what ``signalfire bus init``/``enroll`` write, mode 0600);
    #: read at connect, so the password is in no config file and no environment.
    password_file: str | None = None
    token: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    connect_timeout: Duration = Duration(5)
    #: Metrics stream retention: how long the gateway may be away without losing data.
    metrics_max_age: Duration = Duration(24 * 3600)
    metrics_max_bytes: int = 1 << 30
    alerts_max_age: Duration = Duration(30 * 86400)
    #: How long a ``Nats-Msg-Id`` is remembered for de-duplication of alert events.
    alerts_duplicate_window: Duration = Duration(3600)
    #: Copies of every stream and KV bucket, one per node: 3 on a three-node cluster
    #: (``SF_NATS_REPLICAS``); JetStream allows at most 5.
    replicas: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.replicas <= 5:
            raise ValueError(f"replicas: must be 1 to 5 (one copy per NATS node), got {self.replicas}")

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.prefix)

    def tls_context(self) -> ssl.SSLContext | None:
        if not (self.tls_ca or self.tls_cert or self.url.startswith("tls://")):
            return None
        context = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        return context


async def connect(
    config: NatsConfig,
    name: str,
    *,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    max_reconnect_attempts: int = -1,
    allow_reconnect: bool = True,
    echo: bool = True,
) -> NATS:
    """Connect with reconnect forever (by default); logs disconnects and reconnects.

    ``echo=False``: the server does not deliver this connection's own publishes to its own
    subscriptions (a gateway subscribes to the committed frames every ingest publishes, and
    skips its own: without echo they are not sent back to it at all).

    With the default ``max_reconnect_attempts=-1`` the first connect also waits until a
    server answers, so services may start before NATS. With a positive number, each server
    is tried that many more times and then ``nats.errors.NoServersError`` is raised.

    A first connect the servers refuse (``Authorization Violation``: no credentials, a wrong
    password, a user the server does not know) raises :class:`ConfigError` naming what was
    sent, once as many attempts as there are servers were refused: waiting would not change
    the answer, and a service then exits with status 2 saying why instead of trying every
    half second. A connection that was up and is refused when it reconnects (credentials
    revoked, then maybe restored) keeps trying.
    """

    async def disconnected() -> None:
        if nc.is_closed:  # closed by this process (a stop, a CLI that is done): not a fault
            log.info("NATS connection closed", extra={"service": name})
        else:
            log.warning("disconnected from NATS", extra={"service": name})
        if on_disconnect is not None:
            await on_disconnect()

    async def reconnected() -> None:
        log.info(
            "reconnected to NATS", extra={"url": str(nc.connected_url.geturl() if nc.connected_url else "")}
        )
        if on_reconnect is not None:
            await on_reconnect()

    servers = [config.url, *config.servers]
    said = Throttle(30.0)  # each error's text, once per 30 s
    refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    refusals = 0

    async def error(exc: Exception) -> None:
        nonlocal refusals
        text = str(exc)
        if not refused.done() and not connected and _refusal(exc):
            refusals += 1
            if refusals >= len(servers):
                refused.set_result(text)
                return
        # While the server is away nats-py reports every attempt, and an attempt can fail
        # twice (refused, then the connection reset): say each error once per 30 s.
        if said.due(text):
            log.warning("NATS error: %s", text, extra={"servers": ",".join(servers)})

    options: dict[str, Any] = {
        "servers": servers,
        "name": name,
        "connect_timeout": float(config.connect_timeout),
        "max_reconnect_attempts": max_reconnect_attempts,
        "allow_reconnect": allow_reconnect,
        "reconnect_time_wait": 0.5,
        "disconnected_cb": disconnected,
        "reconnected_cb": reconnected,
        "error_cb": error,
        "no_echo": not echo,
    }
    if config.credentials:
        options["user_credentials"] = config.credentials
    if config.user:
        options["user"] = config.user
        options["password"] = _password(config)
        # Replies come to an inbox subtree of this user's own: the server lets no one else read it.
        options["inbox_prefix"] = inbox_prefix(config.user)
    if config.token:
        options["token"] = config.token
    tls = config.tls_context()
    if tls is not None:
        options["tls"] = tls
    connected = False
    nc = NATS()
    connecting = asyncio.ensure_future(nc.connect(**options))
    try:
        either: list[asyncio.Future[Any]] = [connecting, refused]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        connecting.cancel()
        raise
    if connecting.done():
        refused.cancel()
        connecting.result()  # what the first connect raised (no server answered)
        connected = True
        return nc
    connecting.cancel()
    await asyncio.wait([connecting])  # its end, without its CancelledError (this task's own passes)
    with contextlib.suppress(Exception):
        await nc.close()
    raise _refused_error(config, servers, refused.result())


def _refusal(exc: Exception) -> bool:
    """Whether ``exc`` is the server refusing the credentials (not a network failure)."""
    return isinstance(exc, AuthorizationError) or "authorization violation" in str(exc).lower()


def _refused_error(config: NatsConfig, servers: list[str], text: str) -> ConfigError:
    """What a refused first connect says: what was sent, and what to set."""
    if config.user:
        where = f" in {config.password_file}" if config.password_file else ""
        sent = f"user '{config.user}' was refused (a wrong password{where}, or a user it does not know)"
    elif config.credentials:
        sent = f"the credentials in {config.credentials} were refused"
    elif config.token:
        sent = "the token was refused"
    else:
        sent = (
            "it requires credentials and none were given: set SF_NATS_USER and "
            "SF_NATS_PASSWORD_FILE (or SF_NATS_CREDENTIALS, SF_NATS_TOKEN)"
        )
    addresses = ", ".join(servers)
    return ConfigError(f"NATS ({addresses}) refused the connection: {sent} ({text}; docs/security.md)")


#: What a client sees while the bus cannot answer for a moment: a request unanswered (a stream
#: or bucket whose leader is being elected, a server paused), nobody subscribed to answer it
#: (the stream's only node gone), a JetStream "temporarily unavailable", the connection being
#: re-established. Worth the same request again shortly, unlike a refusal.
BUS_UNAVAILABLE: tuple[type[Exception], ...] = (
    NatsTimeoutError,
    NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
    ConnectionReconnectingError,
    StaleConnectionError,
)


def bus_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the bus could not answer right now (:data:`BUS_UNAVAILABLE`),
    rather than that it refused the request. A denied publish also shows as a timeout, so a
    caller retrying on this bounds its patience."""
    return isinstance(exc, BUS_UNAVAILABLE)


def _password(config: NatsConfig) -> str:
    if config.password_file is None:
        return config.password or ""
    try:
        return Path(config.password_file).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the NATS password file {config.password_file}: {exc.strerror}",
            field="nats.password_file",
        ) from None


#: How long (seconds) the metrics stream remembers a ``Nats-Msg-Id``: a batch its publisher
#: sends again within it (its acknowledgement lost) is stored once, and judged once.
METRICS_DUPLICATE_WINDOW = 120.0


def stream_configs(config: NatsConfig) -> list[StreamConfig]:
    """The two streams of the contract, as this deployment configures them."""
    s = config.subjects
    return [
        StreamConfig(
            name=s.metrics_stream,
            subjects=[s.all_metrics, s.all_events, s.all_agents],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=float(config.metrics_max_age),
            max_bytes=config.metrics_max_bytes,
            discard=DiscardPolicy.OLD,
            duplicate_window=METRICS_DUPLICATE_WINDOW,
            num_replicas=config.replicas,
            description="Signalfire metric batches, events and agent status",
            # The evaluator reads its history with direct gets (`direct_messages`): a reader
            # that needs no consumer, so its identity is given no right to make one (one that
            # may make a consumer may also change the gateway's durables: docs/security.md).
            allow_direct=True,
        ),
        StreamConfig(
            name=s.alerts_stream,
            subjects=[s.all_alerts, s.actions, s.all_notifications],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=float(config.alerts_max_age),
            discard=DiscardPolicy.OLD,
            duplicate_window=float(config.alerts_duplicate_window),
            num_replicas=config.replicas,
            description="Signalfire alert events, alert actions and delivery results",
        ),
    ]


#: KV buckets holding state that must survive restarts, by short name, with their entries'
#: time to live (None: kept until deleted). The notifier's delivery ledger only has to outlive
#: the redelivery of the alert events it covers, which stay in SF_ALERTS for 30 days. The
#: evaluator replicas' leases expire by what each replica observes, not by the bucket's TTL
#: (docs/scaling.md, "Evaluator partitions").
BUCKETS: dict[str, float | None] = {
    "alert_state": None,
    "notify_state": 30 * 86400.0,
    "silences": None,
    "evaluator_leases": None,
}


async def ensure_streams(js: JetStreamContext, config: NatsConfig) -> None:
    """Create (or converge) the ``SF_METRICS`` and ``SF_ALERTS`` streams and the KV buckets.

    Every stream and bucket is created with ``config.replicas`` copies; a stream with another
    number is updated to it (by the gateway or an admin, see below), a bucket's difference is
    logged. Safe to call from every service at every start, also concurrently.
    """
    for wanted in stream_configs(config):
        assert wanted.name is not None
        try:
            info = await js.stream_info(wanted.name)
        except NotFoundError:
            try:
                await js.add_stream(wanted)
                log.info("created stream %s", wanted.name)
                continue
            except Exception:
                # another service created it between our look-up and our add
                info = await js.stream_info(wanted.name)
        current = info.config
        if (
            sorted(current.subjects or []) != sorted(wanted.subjects or [])
            or current.max_age != wanted.max_age
            or current.duplicate_window != wanted.duplicate_window
            or (current.max_bytes or -1) != (wanted.max_bytes or -1)  # the server reports "no limit" as -1
            or (current.num_replicas or 1) != wanted.num_replicas  # a cluster grown from one node
            or bool(current.allow_direct) != bool(wanted.allow_direct)
        ):
            try:
                await js.update_stream(wanted)
            except (NatsTimeoutError, NoRespondersError):
                # The bus refuses a stream update to identities other than the gateway and
                # the admin (signalfire.buspolicy): keep running on the stream as it is.
                log.warning(
                    "stream settings differ from this service's config and could not be changed; "
                    "the gateway (or an admin) updates them at its start",
                    extra={"stream": wanted.name},
                )
                continue
            log.info("updated stream %s", wanted.name)
    for short, ttl in BUCKETS.items():
        bucket = config.subjects.bucket(short)
        try:
            kv = await js.key_value(bucket)
            replicas = (await kv.status()).stream_info.config.num_replicas or 1
            if replicas != config.replicas:
                # Only an admin may change a bucket's replicas (signalfire.buspolicy); the
                # bucket works as it is, with fewer copies than the deployment asks for.
                log.warning(
                    "KV bucket has %d replicas, the config asks for %d; change it with "
                    "`nats stream edit KV_%s --replicas %d` as the bus admin",
                    replicas,
                    config.replicas,
                    bucket,
                    config.replicas,
                    extra={"bucket": bucket},
                )
        except (BucketNotFoundError, NotFoundError):
            await js.create_key_value(
                KeyValueConfig(
                    bucket=bucket,
                    history=1,
                    storage=StorageType.FILE,
                    replicas=config.replicas,
                    ttl=ttl,
                    description=f"Signalfire {short.replace('_', ' ')}",
                )
            )
            log.info("created KV bucket %s", bucket)


#: A whole-bucket read (:func:`bucket_entries`) that comes back short is begun again this many
#: times in all, 0.1 s doubling between attempts, before it fails.
BUCKET_READ_ATTEMPTS = 5
#: Once the watch said it listed the bucket, how long (seconds) a read still short of the
#: bucket's keys waits for the rest before it begins again.
BUCKET_READ_STALL = 0.5


#: JetStream's "wrong last sequence" error codes (a compare-and-set refused): 10071 for a
#: message's expected last sequence, 10164 for an expected last sequence per subject.
WRONG_LAST_SEQUENCE = (10071, 10164)


async def delete_if(kv: KeyValue, key: str, last: int | None) -> None:
    """Delete ``key`` only while its revision is ``last`` (``None``: whatever it is). A refusal
    raises ``KeyWrongLastSequenceError``, as an update's or a create's does: nats-py raises a
    plain ``BadRequestError`` for a delete, which a caller catching the former misses."""
    try:
        await kv.delete(key, last=last)
    except KeyWrongLastSequenceError:
        raise
    except APIError as exc:
        if exc.err_code in WRONG_LAST_SEQUENCE:
            raise KeyWrongLastSequenceError(exc.description) from exc
        raise


#: A watch's heartbeat (seconds): the server sends one to a watch it has nothing else to send,
#: and a watch that misses two begins again after the last entry it received (nats-py's ordered
#: consumer, :func:`watch`). How long a watch can fall behind after the node serving it died.
#: nats-py's own KV watch leaves it at 5 s: missed for 10 s, then 10 s more for each attempt
#: that failed while the stream had no leader.
WATCH_HEARTBEAT = 1.0
#: How long (seconds) the server keeps a watch's consumer once nobody listens to it: a stopped
#: watch's (every whole read stops one: the evaluator reads its leases every poll) goes after
#: that, not after nats-py's 5 minutes (hundreds of idle consumers a replica, each made and
#: removed through the cluster's meta leader). A client away for longer makes it again when it
#: is back (its heartbeats missing), from the entry after the last it received.
WATCH_INACTIVE = 10.0

#: ``Nats-Marker-Reason`` (nats-server 2.11+): the server's own markers of an entry's end, with
#: the operation each stands for.
_MARKER_REASONS = {"MaxAge": KV_PURGE, "Purge": KV_PURGE, "Remove": KV_DEL}


class Watch:
    """The entries written to some keys of a bucket, in the order they were written, from each
    key's current entry on (:func:`watch`). Iterate over it, or take one with :meth:`updates`;
    :meth:`stop` ends it. ``Entry.delta`` is how many entries the server had not yet sent when
    it sent that one (0: the watch had caught up then)."""

    _STOP = object()

    def __init__(self) -> None:
        # Bounded as nats-py's watch is: a consumer that falls behind holds the subscription
        # back (and the server's flow control holds the consumer) instead of growing a queue.
        self._updates: asyncio.Queue[KeyValue.Entry | object] = asyncio.Queue(maxsize=256)
        self._sub: JetStreamContext.PushSubscription | None = None

    async def updates(self, timeout: float = 5.0) -> KeyValue.Entry:
        """The next entry; ``TimeoutError`` when none came within ``timeout`` seconds, and
        ``StopAsyncIteration`` once the watch is stopped."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> KeyValue.Entry:
        entry = await self._updates.get()
        if entry is Watch._STOP:
            self._updates.put_nowait(entry)
            raise StopAsyncIteration
        return entry  # type: ignore[return-value]

    async def stop(self) -> None:
        """End the watch: nobody listens to its consumer any more (the server removes it
        :data:`WATCH_INACTIVE` later), and an iteration ends after what it holds."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):  # a connection already closed has no consumer left
                await sub.unsubscribe()
        while True:
            try:
                self._updates.put_nowait(Watch._STOP)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    self._updates.get_nowait()


async def watch(kv: KeyValue, keys: str = ">") -> Watch:
    """Follow the bucket ``kv``'s ``keys``: each one's current entry (deletions' markers
    included), then every entry written after.

    nats-py's ``KeyValue.watch`` does the same with a 5 s heartbeat, which it does not let its
    caller choose: after a kill -9 of the node serving the watch's consumer, its watch gave
    writes 11 to 19 s late (a notifier muting from a silence that late, or following a track
    another replica had ended). This one asks for :data:`WATCH_HEARTBEAT`, and has its consumer
    removed :data:`WATCH_INACTIVE` after nobody listens to it."""
    result = Watch()
    prefix = kv._pre  # nats-py keeps the bucket's subject prefix and stream to itself

    async def received(msg: Msg) -> None:
        headers = msg.headers or {}
        operation = headers.get(KV_OP)
        if operation is None and "Nats-Marker-Reason" in headers:
            operation = _MARKER_REASONS.get(headers["Nats-Marker-Reason"])
            if operation is None:
                return  # a marker of a reason this client does not know, skipped as nats-py does
        meta = msg.metadata
        entry = KeyValue.Entry(
            bucket=kv._name,
            key=msg.subject[len(prefix) :],
            value=msg.data,
            revision=meta.sequence.stream,
            delta=meta.num_pending,
            created=meta.timestamp,  # type: ignore[arg-type]  # nats-py gives the datetime
            operation=operation,
        )
        await result._updates.put(entry)

    result._sub = await kv._js.subscribe(
        f"{prefix}{keys}",
        stream=kv._stream,
        cb=received,
        ordered_consumer=True,
        idle_heartbeat=WATCH_HEARTBEAT,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        inactive_threshold=WATCH_INACTIVE,
    )
    return result


class BucketReadError(Exception):
    """A KV bucket could not be read whole (:func:`bucket_entries`)."""


async def bucket_entries(kv: KeyValue, *, timeout: float = 5.0) -> dict[str, KeyValue.Entry]:
    """Every key of the bucket ``kv`` with its current entry, read whole or not at all
    (:func:`watch_listed`)."""
    watcher, listed = await watch_listed(kv, timeout=timeout)
    await watcher.stop()
    return {entry.key: entry for entry in listed if entry.operation not in (KV_DEL, KV_PURGE)}


async def watch_listed(
    kv: KeyValue, keys: str = ">", *, timeout: float = 5.0
) -> tuple[Watch, list[KeyValue.Entry]]:
    """A watch of the bucket's ``keys`` (:func:`watch`) and every one of them it listed,
    deletions' markers included, read whole or not at all; the watch goes on with what is
    written after.

    A watch's listing ends when the server's consumer says nothing more is pending, and for
    seconds after the node leading the bucket's stream was killed that listing was seen to end
    early: no key, or one fewer, of a bucket of 40 (an evaluator then took its partitions back
    without their alert states and fired its firing alerts again under new ids). So the
    listing goes on until it holds as many keys as the bucket's stream said it holds after the
    watch began: a bucket keeping one value a key (history 1, as every Signalfire bucket does)
    holds a message per key, a deletion's marker included, and the watch lists each once, then
    what is written after. A listing that stalls short of that is begun again with a new watch,
    up to :data:`BUCKET_READ_ATTEMPTS` times, then raises :class:`BucketReadError`; a stream
    that cannot be asked raises what nats-py raised."""
    short = "nothing read"
    for attempt in range(BUCKET_READ_ATTEMPTS):
        if attempt:
            await asyncio.sleep(0.1 * 2 ** (attempt - 1))
        watcher = await watch(kv, keys)
        try:
            held = await _keys_held(kv, keys)
            listed: dict[str, KeyValue.Entry] = {}
            ended = False
            while len(listed) < held:
                try:
                    entry = await watcher.updates(timeout=BUCKET_READ_STALL if ended else timeout)
                except TimeoutError:
                    break
                listed[entry.key] = entry
                ended = ended or entry.delta == 0  # the server said the listing ended: maybe early
            if len(listed) >= held:
                return watcher, sorted(listed.values(), key=lambda e: e.revision or 0)
            short = f"{len(listed)} of {held} keys listed"
        except BaseException:
            await watcher.stop()
            raise
        await watcher.stop()
    raise BucketReadError(
        f"KV bucket {kv._name}: {keys} not read whole in {BUCKET_READ_ATTEMPTS} attempts ({short})"
    )


async def bucket_latest(kv: KeyValue, keys: str = ">") -> tuple[int, list[KeyValue.Entry]]:
    """The bucket's stream's last sequence and the current entry of every key matching
    ``keys`` (a KV key pattern), deletions' markers included (``operation`` ``DEL`` or
    ``PURGE``), read without a consumer: one request to the stream for its keys, then one get
    a key.

    :func:`watch_listed` makes a consumer, and making one waits for the cluster's meta leader:
    for seconds after that leader's node died, nothing can. A stream (and its keys) answers as
    soon as its own leader does. For buckets of tens of keys (the silences): a get is ~0.2 ms."""
    info = await kv._js.stream_info(kv._stream, subjects_filter=f"{kv._pre}{keys}")
    entries: list[KeyValue.Entry] = []
    for subject in info.state.subjects or {}:
        key = subject[len(kv._pre) :]
        try:
            entries.append(await kv.get(key, validate_keys=False))
        except KeyNotFoundError as exc:  # nats-py's answer for a deletion's marker too
            if exc.entry is not None:
                entries.append(dataclasses.replace(exc.entry, value=exc.entry.value or b"", operation=exc.op))
            # else: gone since the keys were listed; the caller's next read sees why
    return info.state.last_seq, entries


async def last_revision(kv: KeyValue, keys: str = ">") -> int:
    """The newest revision of any key matching ``keys`` (a KV key pattern; deletions count),
    0 when none: one request to the bucket's stream's leader."""
    if keys == ">":
        return int((await kv.status()).stream_info.state.last_seq)
    try:
        # the last message of a wildcard subject: a plain message get (a direct get takes
        # a literal subject only)
        return int((await kv._js.get_msg(kv._stream, subject=f"{kv._pre}{keys}")).seq or 0)
    except NotFoundError:
        return 0


async def _keys_held(kv: KeyValue, keys: str) -> int:
    """How many of ``keys`` the bucket's stream holds now (deletions' markers included), in
    one request to the stream's leader."""
    if keys == ">":
        info = (await kv.status()).stream_info
    else:
        # One subject a key; nats-py's KeyValue keeps its stream and subject prefix to itself.
        # The server lists the subjects of one answer up to its page size (100,000,
        # JSMaxSubjectDetails: more than any prefix Signalfire lists, a notifier's tracks and
        # batches of open alerts).
        info = await kv._js.stream_info(kv._stream, subjects_filter=f"{kv._pre}{keys}")
    history = info.config.max_msgs_per_subject
    if history != 1:
        raise ValueError(f"KV bucket {kv._name} keeps {history} values a key; it is read whole only with 1")
    return info.state.messages if keys == ">" else len(info.state.subjects or {})


@dataclasses.dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as a stream stored it (:func:`direct_messages`)."""

    subject: str
    data: bytes
    seq: int
    #: When the stream stored it: unix seconds on the server's clock.
    time: float
    #: Messages after it that the answering server held.
    pending: int


#: Messages asked for per direct-get request.
DIRECT_BATCH = 1000


class DirectGetError(Exception):
    """A direct get the stream did not answer with messages (no responders: the stream does
    not allow direct gets, or none of its servers answered; or another status)."""


def stored_time(stamp: str) -> float:
    """A time the server stored a message (``Nats-Time-Stamp``, a message get's ``time``: RFC
    3339 in UTC, to the nanosecond) as unix seconds."""
    head, _, fraction = stamp.rstrip("Z").partition(".")
    whole = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
    return whole + (int(fraction[:9].ljust(9, "0")) / 1e9 if fraction else 0.0)


def rfc3339(unix: float) -> str:
    """Unix seconds as a JetStream request's ``start_time`` (RFC 3339 in UTC, microseconds)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(unix))
    return f"{stamp}.{int((unix % 1) * 1e6):06d}Z"


async def direct_messages(
    nc: NATS,
    stream: str,
    *,
    start_time: float | None = None,
    seq: int = 1,
    up_to_seq: int | None = None,
    subject: str | None = None,
    batch: int = DIRECT_BATCH,
    timeout: float = 5.0,
) -> AsyncGenerator[StoredMessage, None]:
    """The messages of ``stream`` (only those on ``subject``, a subject or a wildcard, when
    given) from ``start_time`` (unix seconds) or stream sequence ``seq`` on, in stream order,
    up to ``up_to_seq`` or the end of what the answering server holds, read with JetStream's
    batched direct get (``$JS.API.DIRECT.GET.<stream>``, the
    stream with ``allow_direct``): no consumer is made, so a reader needs no right to make one.
    Any of the stream's servers may answer, a follower possibly a moment behind its leader: a
    reader that needs everything up to a point compares the last sequence it got with the
    leader's (``stream_info``). Raises :class:`DirectGetError` when the stream does not
    answer, ``TimeoutError`` when an answer stops coming for ``timeout`` seconds."""
    base: dict[str, Any] = {"batch": batch}
    if subject is not None:
        base["next_by_subj"] = subject
    first = {"start_time": rfc3339(start_time)} if start_time is not None else {"seq": seq}
    request = {**base, **first}
    api = f"$JS.API.DIRECT.GET.{stream}"
    while True:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        last = 0
        pending = 0
        try:
            await nc.publish(api, msgspec.json.encode(request), reply=inbox)
            while True:
                msg = await sub.next_msg(timeout=timeout)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status == "204":  # the end of this batch
                    pending = int(headers.get("Nats-Num-Pending", "0"))
                    break
                if status == "404":  # nothing (more) stored from there
                    return
                if status:  # 503: no server answers direct gets of it (no `allow_direct`)
                    raise DirectGetError(f"direct get of {stream} answered {status}: {headers}")
                last = int(headers["Nats-Sequence"])
                if up_to_seq is not None and last > up_to_seq:
                    return  # (the server applies `up_to_seq` to `multi_last` requests only)
                yield StoredMessage(
                    subject=headers["Nats-Subject"],
                    data=msg.data,
                    seq=last,
                    time=stored_time(headers["Nats-Time-Stamp"]),
                    pending=int(headers.get("Nats-Num-Pending", "0")),
                )
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if last == 0 or pending == 0 or (up_to_seq is not None and last >= up_to_seq):
            return
        request = {**base, "seq": last + 1}


async def request_every(
    nc: NATS, subject: str, *, timeout: float, quiet: float = 0.25, payload: bytes = b"{}"
) -> list[bytes]:
    """Every answer to one request on a control subject that several replicas answer: collected
    until ``quiet`` seconds pass without another after the first (replicas on one bus answer
    within milliseconds of each other), or ``timeout`` seconds in all; none when nobody answers
    (at once when the server says nobody listens)."""
    answers: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            answers.put_nowait(None)  # no responders: the server's notice, not an answer
        else:
            answers.put_nowait(msg.data)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=collect)
    got: list[bytes] = []
    try:
        await nc.publish(subject, payload, reply=inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            try:
                answer = await asyncio.wait_for(answers.get(), min(left, quiet) if got else left)
            except TimeoutError:
                break
            if answer is None:
                break
            got.append(answer)
    finally:
        await sub.unsubscribe()
    return got


async def request_json(nc: NATS, subject: str, payload: bytes = b"{}", timeout: float = 2.0) -> Any:
    """Request/reply on a control subject; returns the decoded JSON reply.

    Raises :class:`LookupError` when no service answers.
    """
    try:
        reply = await nc.request(subject, payload, timeout=timeout)
    except (NoRespondersError, NatsTimeoutError):
        raise LookupError(f"no service answered on {subject}") from None
    return msgspec.json.decode(reply.data)
