"""The embedded demo broker: amqtt, in this process, on 127.0.0.1.

A convenience so the demo needs nothing installed; **not** the production path, and not the
reliability reference. What it cannot do (amqtt 0.12):

* MQTT 3.1.1 only: an MQTT 5 CONNECT is refused, so no PUBACK reason codes (a refused publish
  is acknowledged and dropped, exactly as on any 3.1.1 broker).
* Everything lives in memory: a restart forgets sessions, queues and retained status.
* No shared subscriptions: ``$share/...`` is refused here (SUBACK failure) rather than
  silently matching nothing; run one ingest worker with a plain subscription.
* After a reconnect it does not resend QoS 1 messages that were in flight and unacknowledged
  (amqtt issue #401). The edge outbox and the store's duplicate check are what keep the
  contract; the broker is not.

Production is Mosquitto 2 with the configuration in ``configs/mosquitto/`` (mutual TLS,
persistence, ACL), or an MQTT 5 broker cluster with shared subscriptions; see
``docs/broker.md``.

It listens on a port of its own (default 18830, or any free port with ``port=0``), never 1883,
so it cannot collide with a broker already running on the machine::

    async with EmbeddedBroker() as broker:
        print(broker.url)          # mqtt://127.0.0.1:18830

Clients must send a user name. amqtt keeps offline QoS 1 messages only for sessions that
authenticated with one (an anonymous session's queue is discarded), so the ingest worker's
persistent session depends on it. The names follow the production ACL: a gateway connects as
its gateway id and may publish only its own topics of the v1 contract; ``ingest`` may only
read the records and status topics; nobody else may read. With ``users`` the passwords are
checked too; without, any non-empty user name is accepted (127.0.0.1 only, for the demo).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from amqtt.broker import Broker  # type: ignore[import-untyped]
from amqtt.contexts import Action  # type: ignore[import-untyped]
from amqtt.errors import BrokerError  # type: ignore[import-untyped]
from amqtt.plugins.base import (  # type: ignore[import-untyped]
    BaseAuthPlugin,
    BaseTopicPlugin,
)
from amqtt.session import Session  # type: ignore[import-untyped]

from bridge.errors import BridgeError
from bridge.messages import RECORDS_FILTER, STATUS_FILTERS, TOPIC_ROOT, PayloadError, check_id

log = logging.getLogger(__name__)

#: A port of its own: never 1883 (a system Mosquitto) nor 8883/8884 (the shipped config).
DEFAULT_PORT = 18830
DEFAULT_HOST = "127.0.0.1"
INGEST_USER = "ingest"
MONITOR_USER = "monitor"
#: What the ingest identity may read (the same filters as the Mosquitto ACL).
_INGEST_READ = (RECORDS_FILTER, *STATUS_FILTERS)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class EmbeddedBrokerError(BridgeError):
    """The embedded broker could not start (port taken, bad address) or was misused."""


def _levels_match(topic_or_filter: str, allowed: str) -> bool:
    """Whether ``topic_or_filter`` lies within the filter ``allowed``, level by level; a
    ``+`` in ``allowed`` matches any one level (also a ``+`` in a requested filter)."""
    req, ok = topic_or_filter.split("/"), allowed.split("/")
    if ok and ok[-1] == "#":
        return len(req) >= len(ok) - 1 and all(a in ("+", r) for r, a in zip(req, ok[:-1],
                                                                                strict=False))
    return len(req) == len(ok) and all(a in ("+", r) for r, a in zip(req, ok, strict=True))


def gateway_may_publish(username: str, topic: str) -> bool:
    """The ``pattern write`` lines of the Mosquitto ACL: a gateway's own v1 topics only."""
    try:
        check_id(username, "user name")
    except PayloadError:
        return False  # a name with "/" or wildcards must not widen the patterns
    own = f"{TOPIC_ROOT}/{username}"
    return topic in (f"{own}/records", f"{own}/status") or _levels_match(
        topic, f"{own}/devices/+/status")


def may(username: str | None, action: str, topic: str) -> bool:
    """The production ACL (``configs/mosquitto/acl``) for one action on one topic or filter."""
    if not username:
        return False
    if topic.startswith("$share/"):
        return False  # not supported by amqtt; refuse instead of matching nothing
    if username == INGEST_USER:
        if action == Action.PUBLISH:
            return False
        return any(_levels_match(topic, allowed) for allowed in _INGEST_READ)
    if username == MONITOR_USER:
        return action != Action.PUBLISH and topic.startswith("$SYS/")
    if action == Action.PUBLISH:
        return gateway_may_publish(username, topic)
    return False  # gateways read nothing: there is no downlink


class UserNameAuth(BaseAuthPlugin):  # type: ignore[misc]
    """Authenticated sessions only: a user name is required, its password checked when
    ``users`` is given. Sessions are never marked anonymous, so their QoS 1 queues are kept
    while they are offline."""

    @dataclass
    class Config:
        users: dict[str, str] = field(default_factory=dict)

    async def authenticate(self, *, session: Session) -> bool:
        username = session.username
        if not username:
            log.warning("refused client %r: no user name (connect as the gateway id, or as "
                        "'ingest' for the ingest worker)", session.client_id)
            return False
        users: dict[str, str] = self.config.users
        if users:
            expected = users.get(username)
            given = session.password or ""
            if isinstance(given, bytes):
                given = given.decode("utf-8", "replace")
            if expected is None or not hmac.compare_digest(expected.encode(), given.encode()):
                log.warning("refused client %r: bad user name or password",
                            session.client_id)
                return False
        session.is_anonymous = False
        return True


class ContractAcl(BaseTopicPlugin):  # type: ignore[misc]
    """Topic rules of the production ACL, and the refusal of ``$share`` subscriptions."""

    @dataclass
    class Config:
        enforce: bool = True

    async def topic_filtering(self, *, session: Session | None = None,
                              topic: str | None = None,
                              action: Action | None = None) -> bool:
        if topic is None or action is None:
            return False
        if not self.config.enforce:
            return not (action == Action.SUBSCRIBE and topic.startswith("$share/"))
        allowed = may(None if session is None else session.username, action, topic)
        if not allowed and action != Action.RECEIVE:
            log.info("refused %s of %r by %r", action.value, topic,
                     None if session is None else session.username)
        return allowed


class EmbeddedBroker:
    """An amqtt broker on ``host:port``, started and stopped from asyncio.

    ``port=0`` picks a free port (read it from :attr:`port` after start). ``users`` maps user
    names to passwords; ``acl=False`` lifts the topic rules (for experiments only).
    """

    def __init__(self, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST, *,
                 users: Mapping[str, str] | None = None, acl: bool = True,
                 session_expiry_s: int = 24 * 3600) -> None:
        if port == 1883:
            raise EmbeddedBrokerError("the embedded broker never uses 1883; that port belongs "
                                      "to a real broker")
        if not 0 <= port <= 65535:
            raise EmbeddedBrokerError(f"port {port} is out of range")
        self.host = host
        self._port = port
        self._users = dict(users or {})
        self._acl = acl
        self._session_expiry_s = session_expiry_s
        self._broker: Any = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._broker is not None

    def connected_clients(self) -> set[str]:
        """Client ids of the sessions that are connected right now."""
        if self._broker is None:
            return set()
        return {client_id for client_id, (session, _) in self._broker.sessions.items()
                if session.transitions.state == "connected"}

    def _config(self) -> dict[str, Any]:
        # amqtt splits the bind string at its last colon and would keep the brackets of
        # "[::1]:port" in the address, so IPv6 addresses go in bare.
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self._port}"}},
            # Disconnected sessions are dropped after this long; amqtt would otherwise keep
            # them (and their queues) in memory forever (amqtt issue #14).
            "session_expiry_interval": self._session_expiry_s,
            # Only these two: no $SYS plugin (it pulls in psutil and warns about it) and no
            # packet logger.
            "plugins": {
                f"{__name__}.UserNameAuth": {"users": self._users},
                f"{__name__}.ContractAcl": {"enforce": self._acl},
            },
        }

    def _check_port_free(self) -> None:
        # amqtt reports a taken port only as a logged traceback and a generic BrokerError;
        # trying the bind first gives the user one clear sentence.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.host, self._port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise EmbeddedBrokerError(
                        f"cannot start the embedded MQTT broker: {self.host}:{self._port} is "
                        "already in use (another broker, or a second demo?); choose another "
                        "port, or 0 for any free one") from None
                raise EmbeddedBrokerError(f"cannot listen on {self.host}:{self._port}: "
                                          f"{exc.strerror}") from None

    async def start(self) -> None:
        if self._broker is not None:
            raise EmbeddedBrokerError("the embedded broker is already running")
        if self._port:
            self._check_port_free()
        broker = Broker(self._config())
        try:
            await broker.start()
        except BrokerError as exc:
            raise EmbeddedBrokerError(f"cannot start the embedded MQTT broker on "
                                      f"{self.host}:{self._port}: {exc}") from None
        if not self._port:
            # Port 0: the operating system chose; ask the listening socket which one.
            server = broker._servers["default"].instance
            self._port = int(server.sockets[0].getsockname()[1])
        self._broker = broker
        log.info("embedded MQTT broker (amqtt, MQTT 3.1.1, in memory) on %s", self.url)
        if not self._users and not _is_loopback(self.host):
            log.warning("the embedded broker listens on %s and accepts any user name: anyone "
                        "who reaches it can claim to be any gateway or the ingest", self.host)

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is None:
            return
        with contextlib.suppress(asyncio.CancelledError):
            await broker.shutdown()
        log.info("embedded MQTT broker on %s stopped", self.url)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()
