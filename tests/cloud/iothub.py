#!/usr/bin/env python3
"""A scripted Azure IoT Hub for tinyedge's tests (Python 3.11, asyncio).

It plays IoT Hub's device-facing MQTT contract on a TLS listener and IoT Hub's device-scope HTTPS
API as edgeHub reads it, and offers a JSON control channel (plain HTTP/1.1 on loopback) through
which a test sets desired properties, queues cloud-to-device messages, invokes direct methods,
reads what devices sent, and makes the cloud fail.

MQTT comes from a third-party implementation, the `amqtt` broker library (PyPI, 0.12.x): its
packet codec, protocol handler (QoS 1 flows, packet ids, PINGREQ), sessions, listener and
per-connection message loop. tinyedge's own codec is never used. amqtt is a broker that routes
PUBLISHes to every matching subscriber; IoT Hub is not: every `$iothub/...` answer goes to the
one connection that asked, although every identity subscribes the same `$iothub/...` filters.
So `HubBroker` below keeps amqtt's listener, handler and message loop and overrides the steps
that make it a broker: CONNECT handling (SAS authentication before any session is touched, one
connection per identity, CONNACK codes), SUBSCRIBE (IoT Hub's per-identity ACL), and the
delivery of client PUBLISHes (handed to `Hub`, never broadcast). Publishes to a device go
through that connection's own amqtt handler (`Conn.send`, `Conn.send_qos1`).

Usage: iothub.py --config hub.json --cert server.pem --key server.key
                 [--mqtt-port 0] [--https-port 0] [--control-port 0] [--verbose]
Prints `READY mqtt=<port> https=<port> control=<port>` on stdout once listening; logs to stderr.
The control API is described in README.md ("The scripted IoT Hub") and in `Control` below.
"""

import argparse
import asyncio
import base64
import copy
import hashlib
import hmac
import json
import logging
import math
import os
import ssl
import sys
import time
import urllib.parse
import uuid

from amqtt.adapters import ReaderAdapter
from amqtt.broker import Broker
from amqtt.contexts import ListenerType
from amqtt.errors import AMQTTError
from amqtt.mqtt.connack import BAD_USERNAME_PASSWORD, NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.publish import PublishPacket

log = logging.getLogger("iothub")

# IoT Hub's limits that the hub enforces (DOCS iot-hub-devguide-quotas-throttling, -device-twins,
# -messages-c2d, -direct-methods).
MAX_D2C_BYTES = 256 * 1024  # a larger PUBLISH closes the connection
TWIN_DOC_MAX = 32 * 1024  # desired / reported, each
TWIN_MAX_DEPTH = 10
TWIN_KEY_MAX = 1024
TWIN_STRING_MAX = 4096
TWIN_INT_RANGE = (-(2**52), 2**52 - 1)
C2D_QUEUE_MAX = 50  # per device, not yet completed
C2D_MAX_DELIVERY = 10  # maxDeliveryCount: then the message is dead-lettered
METHOD_PAYLOAD_MAX = 128 * 1024
CONNECT_TIMEOUT = 10  # seconds a socket may take to send its CONNECT
SCOPE_API = "2018-08-30-preview"
NESTED_SCOPE_API = "2020-06-30-preview"


def now():
    return time.time()


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"))


def quote(s):
    return urllib.parse.quote(str(s), safe="")


def parse_bag(bag):
    """An IoT Hub property bag `k=v&k2=v2` (URL-encoded; a key without `=` has value None)."""
    props = {}
    for part in bag.split("&"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        props[urllib.parse.unquote(key)] = urllib.parse.unquote(value) if eq else None
    return props


def topic_matches(topic_filter, topic):
    """MQTT 3.1.1 topic filter matching (`+`, `#`)."""
    f, t = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


def merge_patch(target, patch):
    """JSON merge patch (RFC 7386) of `patch` into dict `target`, in place; null deletes."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            current = target.get(key)
            target[key] = merge_patch(current if isinstance(current, dict) else {}, value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def json_diff(old, new):
    """The merge patch that turns `old` into `new` (nulls for removed keys)."""
    out = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            out[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(old[key], dict):
            inner = json_diff(old[key], value)
            if inner:
                out[key] = inner
        elif old[key] != value:
            out[key] = copy.deepcopy(value)
    return out


def twin_problem(doc):
    """Why a twin patch is refused by IoT Hub (None if it is acceptable): a JSON object of at most
    32 KiB, objects nested at most 10 below the root, keys of at most 1 KiB without control
    characters, whitespace, `.`, `$` or `#`, strings of at most 4 KiB, integers within ±2^52,
    no null in arrays."""
    if not isinstance(doc, dict):
        return "the twin patch must be a JSON object"
    if len(dumps(doc).encode()) > TWIN_DOC_MAX:
        return f"twin properties exceed {TWIN_DOC_MAX} bytes"

    def check(name, value, depth, in_array):
        if len(name.encode()) > TWIN_KEY_MAX:
            return f"property name {name[:10]}.. longer than {TWIN_KEY_MAX} bytes"
        if any(c in ".$#" or c.isspace() or ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
            return f"property name {name!r} contains an invalid character"
        if isinstance(value, (dict, list)) and depth > TWIN_MAX_DEPTH:
            return f"nested depth of twin property exceeds {TWIN_MAX_DEPTH}"
        if isinstance(value, dict):
            for key, inner in value.items():
                problem = check(key, inner, depth + 1, in_array)
                if problem:
                    return problem
        elif isinstance(value, list):
            for item in value:
                if item is None:
                    return "arrays cannot contain null"
                problem = check("", item, depth + 1, True)
                if problem:
                    return problem
        elif isinstance(value, bool) or value is None:
            pass
        elif isinstance(value, int):
            if not TWIN_INT_RANGE[0] <= value <= TWIN_INT_RANGE[1]:
                return f"property {name} is out of the integer range ±2^52"
        elif len(str(value).encode()) > TWIN_STRING_MAX:
            return f"value of property {name} longer than {TWIN_STRING_MAX} bytes"
        return None

    return check("", doc, 0, False)


def identity_id(device, module):
    return f"{device}/{module}" if module else device


class Identity:
    """A device or module identity in the hub's registry, with its twin and (devices) C2D queue."""

    generation = 638000000000000000

    def __init__(self, spec):
        self.device = str(spec["device"])
        self.module = spec.get("module") or None
        self.key = base64.b64decode(spec["key"], validate=True)
        # IoT Hub identities have two keys; either signs a valid token.
        second = spec.get("secondary_key")
        self.secondary = base64.b64decode(second) if second else hashlib.sha256(b"secondary" + self.key).digest()
        self.parent = spec.get("parent") or None
        self.scope = bool(spec.get("scope", True))
        self.edge = spec.get("edge")  # None: the configured edge device is the one edge device
        self.enabled = spec.get("status", "enabled") == "enabled"
        Identity.generation += 1
        self.generation_id = str(Identity.generation)
        self.desired = dict(spec.get("desired") or {})
        self.desired_version = 1
        self.reported = {}
        self.reported_version = 1
        self.c2d = []  # C2D messages in FIFO order, every state kept for GET /c2d
        self.c2d_changed = asyncio.Event()
        self.c2d_persistent = False  # a clean_session=0 session subscribed to devicebound

    @property
    def id(self):
        return identity_id(self.device, self.module)

    def update(self, other):
        """POST /identities for an existing id: new credentials and scope, same twin and queue."""
        for attr in ("key", "secondary", "parent", "scope", "edge", "enabled"):
            setattr(self, attr, getattr(other, attr))

    def twin(self):
        return {
            "desired": {**copy.deepcopy(self.desired), "$version": self.desired_version},
            "reported": {**copy.deepcopy(self.reported), "$version": self.reported_version},
        }

    def describe(self):
        return {
            "device": self.device, "module": self.module, "parent": self.parent, "scope": self.scope,
            "status": "enabled" if self.enabled else "disabled", "generationId": self.generation_id,
        }


class C2DMessage:
    def __init__(self, device, body, seq):
        self.message_id = str(body.get("message_id") or uuid.uuid4())
        if "payload_base64" in body:
            self.payload = base64.b64decode(body["payload_base64"])
        else:
            self.payload = str(body.get("payload", "")).encode()
        self.properties = {str(k): str(v) for k, v in (body.get("properties") or {}).items()}
        self.system = {}
        for field, key in (("correlation_id", "$.cid"), ("user_id", "$.uid"), ("content_type", "$.ct"),
                           ("content_encoding", "$.ce"), ("ack", "iothub-ack")):
            if body.get(field) is not None:
                self.system[key] = str(body[field])
        self.device = device
        self.seq = seq
        self.state = "queued"  # queued | delivered (in flight) | completed | deadlettered
        self.delivery_count = 0
        self.enqueued = now()
        self.completed = None

    def topic(self):
        """`devices/{d}/messages/devicebound/{bag}` as IoT Hub publishes it: message id and `$.to`
        first, then the other system properties, then the application properties, URL-encoded."""
        pairs = [("$.mid", self.message_id), ("$.to", f"/devices/{self.device}/messages/deviceBound")]
        pairs += list(self.system.items()) + list(self.properties.items())
        bag = "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs)
        return f"devices/{self.device}/messages/devicebound/{bag}"

    def describe(self):
        return {
            "message_id": self.message_id, "payload": self.payload.decode("utf-8", "replace"),
            "properties": self.properties, "system_properties": self.system, "state": self.state,
            "delivery_count": self.delivery_count, "enqueued": self.enqueued, "completed": self.completed,
        }


class Conn:
    """One authenticated MQTT connection (one identity)."""

    def __init__(self, ident, session, handler, writer, username, clean, keep_alive):
        self.ident = ident
        self.keep_alive = keep_alive  # as the client asked; 1.5 times it of silence closes
        self.session = session
        self.handler = handler
        self.writer = writer  # amqtt's StreamWriterAdapter
        self.username = username
        self.clean = clean
        self.peer = f"{session.remote_address}:{session.remote_port}"
        self.subs = {}  # topic filter -> granted QoS
        self.alive = True
        self.graceful = False  # ended by the client's DISCONNECT
        self.c2d_task = None
        self.since = now()

    def subscribed(self, topic):
        return any(topic_matches(f, topic) for f in self.subs)

    def abort(self, why):
        """Close the TCP connection at once (the message loop then ends the session)."""
        if self.alive:
            log.info("closing the connection of %s (%s): %s", self.ident.id, self.peer, why)
        self.alive = False
        transport = getattr(getattr(self.writer, "_writer", None), "transport", None)
        if transport is not None:
            transport.abort()

    async def send(self, topic, payload):
        """A QoS 0 PUBLISH to this connection only (IoT Hub answers twin and method traffic so)."""
        if not self.alive:
            return
        try:
            await self.handler.mqtt_publish(topic, payload, 0, False)
        except Exception as e:  # the connection went away under us
            log.info("publish to %s failed: %r", self.ident.id, e)

    async def send_qos1(self, topic, payload, dup):
        """A QoS 1 PUBLISH that returns once this connection's PUBACK arrives; raises (or is
        cancelled) when the connection ends first. amqtt's own `mqtt_publish` gives up after 5 s,
        which IoT Hub does not, so the PUBACK waiter is registered with its handler directly."""
        handler = self.handler
        packet_id = handler.session.next_packet_id
        packet = PublishPacket.build(topic, payload, packet_id, dup, 1, False)
        waiter = asyncio.get_running_loop().create_future()
        handler._puback_waiters[packet_id] = waiter
        try:
            await handler._send_packet(packet)
            await waiter
        finally:
            handler._puback_waiters.pop(packet_id, None)


class Hub:
    """IoT Hub's state and behaviour: registry, twins, C2D queues, methods, telemetry, faults."""

    def __init__(self, config):
        self.hostname = config["hostname"]
        self.edge_device = config.get("edge_device")
        # The SDKs take the SAS audience and username host from HostName; tests connect to
        # `localhost`, so these names are accepted as the hub's own besides the configured one.
        self.hosts = {h.lower() for h in [self.hostname, *config.get("aliases", ["localhost", "127.0.0.1"])]}
        self.identities = {}
        for spec in config.get("identities", []):
            ident = Identity(spec)
            self.identities[ident.id] = ident
        self.conns = {}  # identity id -> Conn
        self.telemetry = []
        self.requests = []  # every $iothub request a device made, with the answer's status
        self.connects, self.disconnects, self.last_username = {}, {}, {}
        self.refused = []
        self.methods = {}  # (identity id, rid) -> future of (status, payload)
        self.faults = []  # one-shot faults: {"kind", "action", "identity"}
        self.c2d_seq = 0
        self.broker = None  # set by main()

    # ---- faults ----------------------------------------------------------------------------

    def take_fault(self, kind, ident_id):
        for i, fault in enumerate(self.faults):
            if fault["kind"] == kind and fault.get("identity") in (None, ident_id):
                del self.faults[i]
                log.info("fault injected: %s=%r for %s", kind, fault["action"], ident_id)
                return fault["action"]
        return None

    # ---- CONNECT ---------------------------------------------------------------------------

    def authenticate(self, session):
        """(CONNACK return code, identity, reason) for a CONNECT, as IoT Hub decides it."""
        cid = session.client_id or ""
        user, password = session.username, session.password
        fault = self.take_fault("connect", cid)
        if fault is not None:
            return int(fault), None, "refused by an injected fault"
        if user is None or password is None:
            return BAD_USERNAME_PASSWORD, None, "no username or password (only SAS tokens are modelled)"
        ident = self.identities.get(cid)
        if ident is None:
            return NOT_AUTHORIZED, None, f"unknown identity {cid!r}"
        path, _, _query = user.partition("/?")
        host, _, rest = path.rstrip("/").partition("/")
        if host.lower() not in self.hosts or rest != cid:
            return NOT_AUTHORIZED, None, "username does not name this hub and the client id"
        problem = self.check_token(password, ident)
        if problem:
            return (BAD_USERNAME_PASSWORD if problem.startswith("malformed") else NOT_AUTHORIZED), None, problem
        if not ident.enabled:
            return NOT_AUTHORIZED, None, f"identity {cid} is disabled"
        return 0, ident, ""

    def check_token(self, token, ident):
        """Why a SAS token does not authenticate `ident` (None when it does)."""
        prefix = "SharedAccessSignature "
        if not token.startswith(prefix):
            return "malformed password: not a SharedAccessSignature"
        try:
            fields = dict(part.split("=", 1) for part in token[len(prefix):].split("&"))
            sr, sig, se = fields["sr"], urllib.parse.unquote(fields["sig"]), fields["se"]
            expiry = int(se)
        except (KeyError, ValueError):
            return "malformed password: a SharedAccessSignature needs sr, sig and se"
        if "skn" in fields:
            return "shared access policy tokens (skn) are not modelled"
        resource = urllib.parse.unquote(sr)
        host, _, path = resource.partition("/")
        expected = f"devices/{ident.device}" + (f"/modules/{ident.module}" if ident.module else "")
        if host.lower() not in self.hosts or path != expected:
            return f"token audience {resource!r} is not this identity"
        if expiry <= now():
            return "token expired"
        # The signature is HMAC-SHA256 over `urlencoded(sr) + "\n" + se`; the sr as sent is the
        # encoded form its signer used, the canonical encoding covers signers that differ.
        for key in (ident.key, ident.secondary):
            for encoded in {sr, quote(resource)}:
                digest = hmac.new(key, f"{encoded}\n{se}".encode(), hashlib.sha256).digest()
                if hmac.compare_digest(base64.b64encode(digest).decode(), sig):
                    return None
        return "signature does not match the identity's keys"

    def refuse(self, session, rc, reason):
        log.info("CONNECT refused with %d (%s:%s client id %r): %s", rc, session.remote_address,
                 session.remote_port, session.client_id, reason)
        self.refused.append({"client_id": session.client_id, "username": session.username,
                             "rc": rc, "reason": reason, "time": now()})

    def connected(self, conn):
        """Registers an authenticated connection; an older one of the identity is dropped
        (MQTT takeover). Returns CONNACK's session-present flag."""
        ident = conn.ident
        old = self.conns.get(ident.id)
        if old is not None:
            old.abort("a new connection with the same client id took over")
        if conn.clean:
            ident.c2d_persistent = False
        present = 1 if (not conn.clean and ident.c2d_persistent) else 0
        self.conns[ident.id] = conn
        self.connects[ident.id] = self.connects.get(ident.id, 0) + 1
        self.last_username[ident.id] = conn.username
        log.info("%s connected from %s (clean session %s, keep-alive %s s)", ident.id, conn.peer,
                 conn.clean, conn.keep_alive)
        if present:
            # IoT Hub keeps a clean_session=0 device's C2D subscription across connections.
            conn.subs[f"devices/{ident.device}/messages/devicebound/#"] = 1
        return present

    def after_connack(self, conn):
        if conn.subs:
            self.start_c2d(conn)

    def disconnected(self, conn):
        conn.alive = False
        if conn.c2d_task is not None:
            conn.c2d_task.cancel()
        ident = conn.ident
        if self.conns.get(ident.id) is conn:
            del self.conns[ident.id]
        self.disconnects[ident.id] = self.disconnects.get(ident.id, 0) + 1
        log.info("%s disconnected (%s)", ident.id, "DISCONNECT" if conn.graceful else "connection lost")

    # ---- SUBSCRIBE -------------------------------------------------------------------------

    def subscribe(self, conn, topic_filter, qos):
        """SUBACK code for one filter: an identity may subscribe its own twin, method and (devices)
        C2D topics; QoS 2 is granted as 1; anything else is refused (0x80)."""
        ident = conn.ident
        allowed = topic_filter.startswith(("$iothub/twin/res/", "$iothub/twin/PATCH/properties/desired/",
                                           "$iothub/methods/POST/"))
        if ident.module is None and topic_filter.startswith(f"devices/{ident.device}/messages/devicebound/"):
            allowed = True
            if not conn.clean:
                ident.c2d_persistent = True
        if not allowed:
            log.info("%s: subscription to %r refused", ident.id, topic_filter)
            return 0x80
        conn.subs[topic_filter] = min(qos, 1)
        return min(qos, 1)

    def unsubscribe(self, conn, topic_filter):
        conn.subs.pop(topic_filter, None)
        if topic_filter.startswith(f"devices/{conn.ident.device}/messages/devicebound/"):
            conn.ident.c2d_persistent = False
            if conn.c2d_task is not None:
                conn.c2d_task.cancel()
                conn.c2d_task = None

    # ---- PUBLISH from a device -------------------------------------------------------------

    def classify(self, ident, topic):
        """The kind of a device's PUBLISH topic, or None when IoT Hub does not accept it."""
        base = f"devices/{ident.device}" + (f"/modules/{ident.module}" if ident.module else "")
        events = base + "/messages/events"
        if topic == events or topic.startswith(events + "/"):
            return "telemetry"
        path = topic.partition("?")[0].rstrip("/")
        if path == "$iothub/twin/GET":
            return "twin_get"
        if path == "$iothub/twin/PATCH/properties/reported":
            return "twin_patch"
        parts = path.split("/")
        if len(parts) == 4 and parts[:3] == ["$iothub", "methods", "res"]:
            return "method_res"
        return None

    def publish_problem(self, conn, topic, qos, size):
        """Why IoT Hub closes the connection for this PUBLISH (None when accepted). Checked by
        the protocol handler before the PUBACK."""
        if qos == 2:
            return "QoS 2 is not supported by IoT Hub"
        if size > MAX_D2C_BYTES:
            return f"message of {size} bytes exceeds {MAX_D2C_BYTES}"
        if topic is None or self.classify(conn.ident, topic) is None:
            return f"publish to a topic this identity may not use: {topic!r}"
        return None

    async def on_publish(self, conn, topic, payload, qos, dup, will=False):
        ident = conn.ident
        kind = self.classify(ident, topic)
        query = parse_bag(topic.partition("?")[2])
        if kind == "telemetry":
            bag = topic[len(f"devices/{ident.device}"):].partition("/messages/events")[2].lstrip("/")
            self.record_telemetry(ident.id, topic, parse_bag(bag), payload, qos, dup, will)
        elif kind == "twin_get":
            await self.twin_get(conn, query.get("$rid"))
        elif kind == "twin_patch":
            await self.twin_patch(conn, query.get("$rid"), payload)
        elif kind == "method_res":
            self.method_response(conn, topic.split("/")[3], query.get("$rid"), payload)

    def record_telemetry(self, ident_id, topic, props, payload, qos, dup, will):
        try:
            text, encoding = payload.decode("utf-8"), "utf8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(payload).decode(), "base64"
        self.telemetry.append({"seq": len(self.telemetry), "time": now(), "identity": ident_id, "topic": topic,
                               "properties": props, "payload": text, "encoding": encoding, "qos": qos,
                               "dup": dup, "will": will})
        log.info("telemetry from %s: %d bytes, qos %d%s", ident_id, len(payload), qos, " (will)" if will else "")

    async def answer(self, conn, topic, body, request):
        """A twin answer goes to the requesting connection only, and only if it subscribed."""
        self.requests.append(request)
        if not conn.subscribed(topic):
            log.info("%s is not subscribed to %s: answer not sent", conn.ident.id, topic)
            return
        await conn.send(topic, body)

    async def twin_get(self, conn, rid):
        ident = conn.ident
        request = {"identity": ident.id, "op": "GET", "rid": rid, "time": now()}
        fault = self.take_fault("twin_get", ident.id)
        if not rid:
            request["status"] = 400
            return await self.answer(conn, "$iothub/twin/res/400/?$rid=", b'{"message":"$rid is missing"}', request)
        status, body = 200, dumps(ident.twin()).encode()
        if fault == "drop":
            request["status"] = "dropped"
            self.requests.append(request)
            return
        if fault == "malformed":
            body = body[: max(1, len(body) // 2)]  # cut in the middle: not JSON
        elif fault == "oversized":
            twin = ident.twin()
            twin["desired"]["oversized"] = "x" * (1024 * 1024)  # far above IoT Hub's 32 KiB
            body = dumps(twin).encode()
        elif isinstance(fault, int):
            status, body = fault, dumps({"errorCode": fault * 1000, "message": "injected fault"}).encode()
        request["status"] = status
        await self.answer(conn, f"$iothub/twin/res/{status}/?$rid={rid}", body, request)

    async def twin_patch(self, conn, rid, payload):
        ident = conn.ident
        request = {"identity": ident.id, "op": "PATCH reported", "rid": rid, "time": now()}
        fault = self.take_fault("twin_patch", ident.id)
        if fault == "drop":
            request["status"] = "dropped"
            self.requests.append(request)
            return
        if isinstance(fault, int):
            status, body, suffix = fault, dumps({"errorCode": fault * 1000, "message": "injected fault"}), ""
        else:
            try:
                patch = json.loads(payload.decode("utf-8"))
                problem = twin_problem(patch)
            except (UnicodeDecodeError, ValueError):
                patch, problem = None, "the body is not JSON"
            if problem is None:
                merged = merge_patch(copy.deepcopy(ident.reported), patch)
                if len(dumps(merged).encode()) > TWIN_DOC_MAX:
                    problem = f"reported properties would exceed {TWIN_DOC_MAX} bytes"
            if problem is None:
                ident.reported = merged
                ident.reported_version += 1
                status, body, suffix = 204, "", f"&$version={ident.reported_version}"
            else:
                log.info("%s: reported patch refused: %s", ident.id, problem)
                status, body, suffix = 400, dumps({"errorCode": 400004, "message": problem}), ""
        request["status"] = status
        if not rid:
            # Nothing to correlate an answer with: applied (or refused) silently.
            self.requests.append(request)
            return
        await self.answer(conn, f"$iothub/twin/res/{status}/?$rid={rid}{suffix}", body.encode(), request)

    def method_response(self, conn, status, rid, payload):
        waiter = self.methods.get((conn.ident.id, (rid or "").lower()))
        if waiter is None or waiter.done():
            log.info("%s: method response for unknown request id %r ignored", conn.ident.id, rid)
            return
        try:
            code = int(status)
        except ValueError:
            log.info("%s: method response status %r is not a number: ignored", conn.ident.id, status)
            return
        try:
            body = json.loads(payload.decode("utf-8")) if payload else None
        except (UnicodeDecodeError, ValueError):
            body = payload.decode("utf-8", "replace")
        waiter.set_result((code, body))

    # ---- cloud side: desired properties, methods, C2D ---------------------------------------

    async def push_desired(self, ident, patch):
        """Bumps the desired version and notifies the identity's connection if it is subscribed
        (IoT Hub notifies connected devices only; a device offline reads the twin later)."""
        fault = self.take_fault("desired_push", ident.id)
        ident.desired_version += 2 if fault == "gap" else 1
        body = dumps({**patch, "$version": ident.desired_version}).encode()
        if fault == "malformed":
            body = body[: max(1, len(body) // 2)]
        topic = f"$iothub/twin/PATCH/properties/desired/?$version={ident.desired_version}"
        conn = self.conns.get(ident.id)
        if fault == "drop" or conn is None or not conn.subscribed(topic):
            return False
        await conn.send(topic, body)
        return True

    def method_target(self, ident):
        conn = self.conns.get(ident.id)
        if conn is not None and conn.alive and conn.subscribed("$iothub/methods/POST/x/?$rid=0"):
            return conn
        return None

    async def invoke(self, ident, name, payload, response_timeout, connect_timeout):
        """(HTTP status, body) of a direct method call, as IoT Hub's service API answers it."""
        deadline = now() + connect_timeout
        conn = self.method_target(ident)
        while conn is None and now() < deadline:
            await asyncio.sleep(0.05)
            conn = self.method_target(ident)
        if conn is None:
            return 404, {"errorCode": 404103, "message": "Timed out waiting for device to connect."}
        rid = uuid.uuid4().hex
        waiter = asyncio.get_running_loop().create_future()
        self.methods[(ident.id, rid)] = waiter
        try:
            await conn.send(f"$iothub/methods/POST/{name}/?$rid={rid}", dumps(payload).encode())
            status, body = await asyncio.wait_for(waiter, response_timeout)
            return 200, {"status": status, "payload": body}
        except asyncio.TimeoutError:
            return 504, {"errorCode": 504101, "message": "Timed out waiting for the response from device."}
        finally:
            del self.methods[(ident.id, rid)]

    def start_c2d(self, conn):
        ident = conn.ident
        if ident.module is None and conn.c2d_task is None and any("/messages/devicebound/" in f for f in conn.subs):
            conn.c2d_task = asyncio.create_task(self.c2d_loop(conn))

    async def c2d_loop(self, conn):
        """Delivers the device's queue in order, one message in flight: QoS 1, completed by the
        PUBACK; a message whose connection ends before the PUBACK goes back to the head of the
        queue and is delivered again (DUP set) to the next subscribed connection."""
        ident = conn.ident
        while conn.alive:
            head = next((m for m in ident.c2d if m.state in ("queued", "delivered")), None)
            if head is None or head.state == "delivered":  # nothing, or in flight on a dying connection
                ident.c2d_changed.clear()
                await ident.c2d_changed.wait()
                continue
            head.state = "delivered"
            head.delivery_count += 1
            try:
                await conn.send_qos1(head.topic(), head.payload, dup=head.delivery_count > 1)
            except BaseException:  # connection lost (or our task cancelled): abandoned
                head.state = "deadlettered" if head.delivery_count >= C2D_MAX_DELIVERY else "queued"
                ident.c2d_changed.set()
                return
            head.state, head.completed = "completed", now()
            log.info("C2D %s completed by %s", head.message_id, ident.id)

    # ---- device scope (HTTPS) --------------------------------------------------------------

    def scope_name(self, device):
        ident = self.identities.get(device)
        return f"ms-azure-iot-edge://{device}-{ident.generation_id}" if ident else None

    def is_edge(self, ident):
        return ident.edge if ident.edge is not None else ident.device == self.edge_device

    def scope_entry(self, ident):
        """A device or module as the registry (Microsoft.Azure.Devices `Device`/`Module`) shows it."""
        entry = {
            "deviceId": ident.device,
            "generationId": ident.generation_id,
            "etag": base64.b64encode(ident.generation_id.encode()).decode(),
            "connectionState": "Connected" if ident.id in self.conns else "Disconnected",
            "connectionStateUpdatedTime": "0001-01-01T00:00:00Z",
            "lastActivityTime": "0001-01-01T00:00:00Z",
            "cloudToDeviceMessageCount": sum(m.state in ("queued", "delivered") for m in ident.c2d),
            "authentication": {
                "symmetricKey": {"primaryKey": base64.b64encode(ident.key).decode(),
                                 "secondaryKey": base64.b64encode(ident.secondary).decode()},
                "x509Thumbprint": {"primaryThumbprint": None, "secondaryThumbprint": None},
                "type": "sas",
            },
        }
        if ident.module:
            entry["moduleId"] = ident.module
            entry["managedBy"] = "iotEdge" if self.is_edge(self.identities.get(ident.device, ident)) else None
            return entry
        own = self.scope_name(ident.device) if self.is_edge(ident) else None
        parent = self.scope_name(ident.parent) if ident.parent else None
        entry.update({
            "status": "enabled" if ident.enabled else "disabled",
            "statusReason": None,
            "statusUpdatedTime": "0001-01-01T00:00:00Z",
            "capabilities": {"iotEdge": self.is_edge(ident)},
            "deviceScope": own or parent,
            "parentScopes": [parent] if parent else [],
        })
        return entry

    def scope_page(self, count, offset):
        """Page `offset // count` of the device scope: `count` in-scope devices from `offset`,
        with the in-scope modules of those devices (modules of a device that is not listed
        itself come on the first page), and the offset of the next page (None on the last)."""
        devices = [i for i in self.identities.values() if i.scope and i.module is None]
        page = devices[offset:offset + count]
        listed, on_page = {d.device for d in devices}, {d.device for d in page}
        modules = [i for i in self.identities.values() if i.scope and i.module
                   and (i.device in on_page or (offset == 0 and i.device not in listed))]
        following = offset + count if offset + count < len(devices) else None
        return [self.scope_entry(d) for d in page], [self.scope_entry(m) for m in modules], following

    def scope_lookup(self, device, module):
        ident = self.identities.get(identity_id(device, module or None))
        if ident is None or not ident.scope:
            return {"devices": [], "modules": [], "continuationLink": None}
        entry = self.scope_entry(ident)
        return {"devices": [] if module else [entry], "modules": [entry] if module else [],
                "continuationLink": None}


class FramingError(Exception):
    """Bad MQTT framing; deliberately not amqtt's MQTTError, which its reader loop discards and
    reads on: any other exception ends the connection."""


class GuardedReader(ReaderAdapter):
    """The reader amqtt's handler reads a connection through. It first gives back the byte read
    to check that the first packet is a CONNECT, and checks MQTT 3.1.1 framing on the way: a
    packet type a client may send with its fixed flags, a remaining length of at most 4 bytes and
    at most IoT Hub's message size (plus room for the topic), and no read past a packet's end.
    amqtt alone would discard such input and read on from the middle of a packet, or wait for a
    256 MB body; IoT Hub closes the connection."""

    MAX_PACKET = MAX_D2C_BYTES + 64 * 1024
    FLAGS = {1: {0}, 3: None, 4: {0}, 5: {0}, 6: {2}, 7: {0}, 8: {2}, 10: {2}, 12: {0}, 14: {0}}

    def __init__(self, inner, head, peer):
        self.inner, self.head, self.peer = inner, head, peer
        self.state, self.left, self.length, self.multiplier, self.length_bytes = "type", 0, 0, 1, 0

    def fail(self, why):
        log.info("%s: %s: connection closed", self.peer, why)
        raise FramingError(why)

    async def read(self, n=-1):
        if n < 0 or (self.state == "body" and n > self.left):
            self.fail("a field runs past the end of its packet")
        data, self.head = self.head[:n], self.head[n:]
        if len(data) < n:
            data += await self.inner.read(n - len(data))
        self.check(data)
        return data

    def check(self, data):
        i = 0
        while i < len(data):
            if self.state == "body":
                taken = min(self.left, len(data) - i)
                self.left -= taken
                i += taken
                if self.left == 0:
                    self.state = "type"
                continue
            byte = data[i]
            i += 1
            if self.state == "type":
                kind, flags = byte >> 4, byte & 0x0F
                if kind not in self.FLAGS:
                    self.fail(f"packet type {kind} is not one a client sends")
                if (self.FLAGS[kind] is not None and flags not in self.FLAGS[kind]) or (kind == 3 and flags & 6 == 6):
                    self.fail(f"flags {flags:#x} are invalid for packet type {kind}")
                self.state, self.length, self.multiplier, self.length_bytes = "length", 0, 1, 0
            else:
                self.length += (byte & 0x7F) * self.multiplier
                self.multiplier *= 128
                self.length_bytes += 1
                if byte & 0x80:
                    if self.length_bytes == 4:
                        self.fail("remaining length longer than 4 bytes")
                elif self.length > self.MAX_PACKET:
                    self.fail(f"packet of {self.length} bytes exceeds {self.MAX_PACKET}")
                else:
                    self.state, self.left = ("body", self.length) if self.length else ("type", 0)

    def feed_eof(self):
        self.inner.feed_eof()


class HubProtocolHandler(BrokerProtocolHandler):
    """amqtt's broker-side protocol handler, with IoT Hub's checks on a client's PUBLISH before
    it is acknowledged, and keep-alive enforced (1.5 × the client's keep-alive of silence)."""

    hub = None

    async def handle_publish(self, publish_packet):
        conn = self.session.attributes.get("iothub.conn") if self.session else None
        if conn is None:
            return
        data = publish_packet.data or b""
        problem = self.hub.publish_problem(conn, publish_packet.topic_name, publish_packet.qos, len(data))
        if problem:
            conn.abort(problem)
            return
        await super().handle_publish(publish_packet)

    def handle_read_timeout(self):
        conn = self.session.attributes.get("iothub.conn") if self.session else None
        if conn is not None:
            conn.abort("keep-alive expired")


class HubBroker(Broker):
    """amqtt's Broker whose connection setup, SUBSCRIBE and client PUBLISH handling are IoT Hub's
    (see the module docstring): nothing is ever broadcast."""

    def __init__(self, hub, config):
        super().__init__(config)
        self.hub = hub
        HubProtocolHandler.hub = hub

    async def _initialize_client_session(self, reader, writer, remote_address, remote_port):
        # Unlike the base broker, no existing session is touched before authentication, and a
        # first packet that is not a CONNECT is refused at once (amqtt would try to parse it as
        # one and wait for bytes that never come).
        async def read_connect():
            first = await reader.read(1)
            if not first or first[0] >> 4 != 1:
                raise AMQTTError(f"the first packet is not a CONNECT (first byte {first.hex() or 'EOF'})")
            guarded = GuardedReader(reader, first, f"{remote_address}:{remote_port}")
            handler, session = await HubProtocolHandler.init_from_connect(guarded, writer, self.plugins_manager)
            session.attributes["iothub.reader"] = guarded
            return handler, session

        try:
            return await asyncio.wait_for(read_connect(), CONNECT_TIMEOUT)
        except Exception as e:  # timeout, not a CONNECT, malformed CONNECT, protocol level != 4
            log.info("%s:%s sent no valid CONNECT (%r): closed", remote_address, remote_port, e)
            try:
                await asyncio.wait_for(writer.close(), 2)
            except Exception:
                pass
            raise AMQTTError(str(e)) from None

    async def _handle_client_session(self, reader, writer, session, handler, server, listener_name):
        hub, conn = self.hub, None
        reader = session.attributes.pop("iothub.reader", reader)
        try:
            rc, ident, reason = hub.authenticate(session)
            ka = session.keep_alive
            session.keep_alive = math.ceil(ka * 1.5) if ka else 0
            handler.attach(session, reader, writer)
            if rc:
                hub.refuse(session, rc, reason)
                await handler._send_packet(ConnackPacket.build(0, rc))
                try:
                    await asyncio.wait_for(writer.close(), 2)
                except Exception:  # the client may hang up first
                    pass
                return
            conn = Conn(ident, session, handler, writer, session.username, bool(session.clean_session), ka)
            session.attributes["iothub.conn"] = conn
            present = hub.connected(conn)
            session.transitions.connect()
            await handler._send_packet(ConnackPacket.build(present, 0))
            await handler.start()
            hub.after_connack(conn)
            await self._client_message_loop(session, handler)
        except Exception:
            log.exception("connection from %s:%s failed", session.remote_address, session.remote_port)
        finally:
            if conn is not None:
                hub.disconnected(conn)
                conn.abort("session ended")
            try:
                await asyncio.wait_for(self._stop_handler(handler), 2)
            except Exception:
                pass

    async def _handle_disconnect(self, session, handler, disconnect_waiter):
        conn = session.attributes.get("iothub.conn")
        graceful = isinstance(disconnect_waiter.result(), DisconnectPacket)
        if conn is not None:
            conn.graceful = graceful
            # IoT Hub sends a will message (on the identity's telemetry topic) on any end but
            # the client's DISCONNECT.
            if not graceful and session.will_flag and session.will_topic:
                topic, data = session.will_topic, bytes(session.will_message or b"")
                if self.hub.classify(conn.ident, topic) == "telemetry":
                    await self.hub.on_publish(conn, topic, data, session.will_qos or 0, False, will=True)
        try:
            await asyncio.wait_for(self._stop_handler(handler), 2)
        except Exception:
            pass
        session.transitions.disconnect()

    async def _handle_subscription(self, session, handler, subscribe_waiter):
        conn = session.attributes["iothub.conn"]
        subscription = subscribe_waiter.result()
        codes = [self.hub.subscribe(conn, f, q) for f, q in subscription.topics]
        await handler.mqtt_acknowledge_subscription(subscription.packet_id, codes)
        self.hub.start_c2d(conn)

    async def _handle_unsubscription(self, session, handler, unsubscribe_waiter):
        conn = session.attributes["iothub.conn"]
        unsubscription = unsubscribe_waiter.result()
        for topic_filter in unsubscription.topics:
            self.hub.unsubscribe(conn, topic_filter)
        await handler.mqtt_acknowledge_unsubscription(unsubscription.packet_id)

    async def _handle_message_delivery(self, session, handler, wait_deliver):
        message = wait_deliver.result()
        conn = session.attributes.get("iothub.conn")
        if message is None or conn is None:
            return True
        try:
            dup = bool(message.publish_packet and message.publish_packet.dup_flag)
            await self.hub.on_publish(conn, message.topic, bytes(message.data or b""), message.qos or 0, dup)
        except Exception:
            log.exception("handling a PUBLISH from %s failed", conn.ident.id)
            conn.abort("internal error")
        return True

    # ---- /down and /up ---------------------------------------------------------------------

    async def stop_listening(self):
        server = self._servers["default"]
        if server.instance is not None:
            server.instance.close()
            server.instance = None

    async def listen(self, port):
        server = self._servers["default"]
        if server.instance is None:
            listener = self.listeners_config["default"]
            context = self._create_ssl_context(listener)
            server.instance = await self._create_server_instance("default", ListenerType.TCP, "127.0.0.1",
                                                                 port, context)


# ---- HTTP/1.1: the control channel and the device-scope API -----------------------------------

REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error",
           503: "Service Unavailable", 504: "Gateway Timeout"}


class HttpError(Exception):
    def __init__(self, status, message, **extra):
        super().__init__(message)
        self.status, self.body = status, {"message": message, **extra}


async def serve_http(reader, writer, route):
    """One request per connection (Content-Length bodies), answered with JSON and closed."""
    headers_out = {}
    try:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if not 0 <= length <= 16 * 1024 * 1024:
                raise HttpError(413, "body too large")
            body = await asyncio.wait_for(reader.readexactly(length), 10)
        except HttpError:
            raise
        except Exception as e:
            raise HttpError(400, f"malformed HTTP request: {e!r}") from None
        status, obj = await route(method, target, headers, body)
        if isinstance(obj, tuple):
            obj, headers_out = obj
    except HttpError as e:
        status, obj = e.status, e.body
    except Exception as e:
        log.exception("HTTP request failed")
        status, obj = 500, {"message": repr(e)}
    data = b"" if status == 204 else dumps(obj).encode()
    head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", "Content-Type: application/json; charset=utf-8",
            f"Content-Length: {len(data)}", "Connection: close"] + [f"{k}: {v}" for k, v in headers_out.items()]
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await asyncio.wait_for(writer.drain(), 10)
        writer.close()
    except Exception:
        writer.transport.abort()


def json_body(body):
    try:
        return json.loads(body.decode("utf-8")) if body.strip() else {}
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "the body is not JSON") from None


class Control:
    """The control channel the tests drive. Ids are `device` or `device/module`, URL-encoded in
    paths (`$` as %24). Endpoints:
      GET /twins/{id}                  the cloud twin {"desired":{…,"$version"},"reported":{…}}
      PATCH /twins/{id}/desired        merge patch → new version, pushed to a subscribed client
      PUT /twins/{id}/desired          replace desired → the diff is pushed
      POST /c2d/{device}               {"payload", "payload_base64"?, "properties"?, "message_id"?,
                                        "correlation_id"?, "content_type"?, "content_encoding"?,
                                        "ack"?} → {"message_id"}
      GET /c2d/{device}                [{message_id, payload, properties, state, delivery_count…}]
      POST /methods/{id}               {"methodName", "payload", "responseTimeoutInSeconds"?,
                                        "connectTimeoutInSeconds"?} → 200 {"status","payload"} | 404 | 504
      GET /telemetry[?since=SEQ]       every message devices sent, in arrival order
      GET /requests                    every twin request devices made, with the status answered
      GET /connections                 connected identities, counts, usernames, refusals
      GET|POST /identities, DELETE /identities/{id}
      POST /down, POST /up             stop / resume the cloud's listeners (same ports)
      POST /faults, GET /faults        one-shot misbehaviour (see `fault`)
    """

    def __init__(self, hub, app):
        self.hub, self.app = hub, app

    def ident(self, raw):
        ident = self.hub.identities.get(urllib.parse.unquote(raw))
        if ident is None:
            raise HttpError(404, f"identity {urllib.parse.unquote(raw)!r} not found", errorCode=404001)
        return ident

    async def route(self, method, target, _headers, body):
        path, _, query = target.partition("?")
        hub = self.hub
        if path == "/health":
            return 200, {"ok": True}
        if path.startswith("/twins/"):
            rest = path[len("/twins/"):]
            if method == "GET":
                return 200, self.ident(rest).twin()
            if method in ("PATCH", "PUT") and rest.endswith("/desired"):
                ident = self.ident(rest[: -len("/desired")])
                doc = json_body(body)
                if isinstance(doc, dict):
                    doc = {k: v for k, v in doc.items() if k not in ("$version", "$metadata")}
                problem = twin_problem(doc)
                if problem:
                    raise HttpError(400, problem, errorCode=400004)
                if method == "PATCH":
                    new, patch = merge_patch(copy.deepcopy(ident.desired), doc), doc
                else:
                    new, patch = copy.deepcopy(doc), json_diff(ident.desired, doc)
                if len(dumps(new).encode()) > TWIN_DOC_MAX:
                    raise HttpError(400, f"desired properties would exceed {TWIN_DOC_MAX} bytes", errorCode=400004)
                ident.desired = new
                pushed = await hub.push_desired(ident, patch)
                return 200, {**ident.twin(), "pushed": pushed}
        if path.startswith("/c2d/"):
            ident = self.ident(path[len("/c2d/"):])
            if ident.module:
                raise HttpError(400, "cloud-to-device messages go to devices, not modules")
            if method == "GET":
                return 200, [m.describe() for m in ident.c2d]
            if method == "POST":
                doc = json_body(body)
                if not isinstance(doc, dict):
                    raise HttpError(400, "the body must be a JSON object")
                if sum(m.state in ("queued", "delivered") for m in ident.c2d) >= C2D_QUEUE_MAX:
                    raise HttpError(403, "device queue depth exceeds 50", errorCode=403004)
                hub.c2d_seq += 1
                message = C2DMessage(ident.device, doc, hub.c2d_seq)
                ident.c2d.append(message)
                ident.c2d_changed.set()
                return 200, {"message_id": message.message_id}
        if path.startswith("/methods/") and method == "POST":
            return await self.invoke(self.ident(path[len("/methods/"):]), json_body(body))
        if path == "/telemetry" and method == "GET":
            since = int(urllib.parse.parse_qs(query).get("since", ["0"])[0])
            return 200, hub.telemetry[since:]
        if path == "/requests" and method == "GET":
            return 200, hub.requests
        if path == "/connections" and method == "GET":
            return 200, {
                "connected": sorted(hub.conns),
                "sessions": {i: {"peer": c.peer, "username": c.username, "clean_session": c.clean,
                                 "keep_alive": c.keep_alive, "subscriptions": c.subs, "since": c.since}
                             for i, c in hub.conns.items()},
                "connects": hub.connects, "disconnects": hub.disconnects, "last_username": hub.last_username,
                "refused": len(hub.refused), "refused_reasons": hub.refused,
            }
        if path == "/identities":
            if method == "GET":
                return 200, [i.describe() for i in hub.identities.values()]
            if method == "POST":
                try:
                    new = Identity(json_body(body))
                except (KeyError, ValueError, TypeError) as e:
                    raise HttpError(400, f"bad identity: {e!r}") from None
                if new.id in hub.identities:
                    hub.identities[new.id].update(new)
                else:
                    hub.identities[new.id] = new
                return 200, hub.identities[new.id].describe()
        if path.startswith("/identities/") and method == "DELETE":
            ident = self.ident(path[len("/identities/"):])
            del hub.identities[ident.id]
            conn = hub.conns.get(ident.id)
            if conn is not None:
                conn.abort("identity deleted")
            return 200, ident.describe()
        if path == "/down" and method == "POST":
            await self.app.down()
            return 200, {"down": True}
        if path == "/up" and method == "POST":
            await self.app.up()
            return 200, {"down": False}
        if path == "/faults":
            if method == "GET":
                return 200, hub.faults
            if method == "POST":
                return 200, await self.fault(json_body(body))
        raise HttpError(404, f"no such endpoint: {method} {path}")

    async def invoke(self, ident, doc):
        if not isinstance(doc, dict) or not isinstance(doc.get("methodName"), str) or not doc["methodName"]:
            raise HttpError(400, "methodName is required", errorCode=400000)
        name = doc["methodName"]
        if len(name) > 100 or any(c in name for c in "/#+?"):
            raise HttpError(400, f"invalid method name {name!r}", errorCode=400000)
        payload = doc.get("payload")
        if len(dumps(payload).encode()) > METHOD_PAYLOAD_MAX:
            raise HttpError(413, "method payload exceeds 128 KiB", errorCode=413002)
        try:
            response_timeout = float(doc.get("responseTimeoutInSeconds", 30))
            connect_timeout = float(doc.get("connectTimeoutInSeconds", 0))
        except (TypeError, ValueError):
            raise HttpError(400, "timeouts must be numbers", errorCode=400000) from None
        # IoT Hub allows 5–300 s for the response; shorter ones are accepted here so that tests
        # of the 504 path do not wait 5 s.
        if not (0 < response_timeout <= 300 and 0 <= connect_timeout <= 300):
            raise HttpError(400, "responseTimeoutInSeconds must be in (0, 300], connectTimeoutInSeconds in [0, 300]",
                            errorCode=400000)
        return await self.hub.invoke(ident, name, payload, response_timeout, connect_timeout)

    async def fault(self, doc):
        """One-shot faults, each consumed by the first matching event (of `identity` if given):
          {"twin_get": "malformed"|"oversized"|"drop"|<status>}  the next twin GET
          {"twin_patch": "drop"|<status>}                        the next reported patch
          {"desired_push": "malformed"|"drop"|"gap"}             the next desired push
          {"connect": <CONNACK code>}                            the next CONNECT (`identity` = client id)
        and immediate ones:
          {"publish_unknown_topic": id, "topic"?: …, "payload"?: …}  a PUBLISH on a topic IoT Hub never uses
          {"drop_connection": id}                                     the identity's connection is cut"""
        if not isinstance(doc, dict):
            raise HttpError(400, "the body must be a JSON object")
        hub, done = self.hub, {}
        for kind in ("twin_get", "twin_patch", "desired_push", "connect"):
            if kind in doc:
                hub.faults.append({"kind": kind, "action": doc[kind], "identity": doc.get("identity")})
                done[kind] = doc[kind]
        if "publish_unknown_topic" in doc:
            conn = hub.conns.get(str(doc["publish_unknown_topic"]))
            if conn is None:
                raise HttpError(404, f"{doc['publish_unknown_topic']} is not connected")
            topic = doc.get("topic", "$iothub/unknown/resource/?$rid=0")
            await conn.send(topic, str(doc.get("payload", "{}")).encode())
            done["publish_unknown_topic"] = topic
        if "drop_connection" in doc:
            conn = hub.conns.get(str(doc["drop_connection"]))
            if conn is None:
                raise HttpError(404, f"{doc['drop_connection']} is not connected")
            conn.abort("dropped by an injected fault")
            done["drop_connection"] = conn.ident.id
        if not done:
            raise HttpError(400, "no known fault in the body")
        return done


class ScopeApi:
    """IoT Hub's device-scope API as edgeHub calls it (Azure/iotedge `DeviceScopeApiClient`,
    `NestedDeviceScopeApiClient`): authenticated by a SAS token of `{edge}/$edgeHub`."""

    def __init__(self, hub):
        self.hub = hub

    def unauthorized(self):
        return 401, ({"Message": "ErrorCode:IotHubUnauthorizedAccess;Unauthorized",
                      "ExceptionMessage": "Tracking ID:scripted-hub"}, {"iothub-errorcode": "IotHubUnauthorizedAccess"})

    async def route(self, method, target, headers, body):
        hub = self.hub
        path, _, query = target.partition("?")
        parts = [urllib.parse.unquote(p) for p in path.split("/")]
        # /devices/{edge}/modules/{$edgeHub}/{operation}
        if len(parts) != 6 or parts[1] != "devices" or parts[3] != "modules":
            raise HttpError(404, f"no such resource: {path}")
        edge, module, operation = parts[2], parts[4], parts[5]
        caller = hub.identities.get(identity_id(edge, module))
        token = headers.get("authorization", "")
        if module != "$edgeHub" or caller is None or hub.check_token(token, caller) is not None:
            log.info("device scope request for %s/%s refused: bad or missing token", edge, module)
            return self.unauthorized()
        params = {k: v[0] for k, v in urllib.parse.parse_qs(query, keep_blank_values=True).items()}
        if method == "GET" and operation == "devicesAndModulesInDeviceScope":
            count = max(1, int(params.get("deviceCount") or 1000))
            offset = int(params.get("continuationToken") or 0)
            devices, modules, following = hub.scope_page(count, offset)
            link = None
            if following is not None:
                link = (f"/devices/{edge}/modules/{module}/devicesAndModulesInDeviceScope?deviceCount={count}"
                        f"&continuationToken={following}&api-version={SCOPE_API}")
            return 200, {"devices": devices, "modules": modules, "continuationLink": link}
        if method == "GET" and operation == "deviceAndModuleInDeviceScope":
            return 200, hub.scope_lookup(params.get("targetDeviceId", ""), params.get("targetModuleId"))
        if method == "POST" and operation == "devicesAndModulesInTargetDeviceScope":
            doc = json_body(body)
            count = max(1, int(doc.get("pageSize") or 1000))
            link = doc.get("continuationLink") or ""
            offset = int(parse_bag(link.partition("?")[2]).get("continuationToken") or 0)
            devices, modules, following = hub.scope_page(count, offset)
            link = None
            if following is not None:
                link = (f"/devices/{edge}/modules/{module}/devicesAndModulesInTargetDeviceScope?"
                        f"continuationToken={following}&api-version={NESTED_SCOPE_API}")
            return 200, {"devices": devices, "modules": modules, "continuationLink": link}
        if method == "POST" and operation == "getDeviceAndModuleOnBehalfOf":
            doc = json_body(body)
            return 200, hub.scope_lookup(str(doc.get("targetDeviceId", "")), doc.get("targetModuleId"))
        raise HttpError(404, f"no such operation: {method} {operation}")


class App:
    """The three listeners; /down closes the cloud's two (MQTT and HTTPS), /up reopens them."""

    def __init__(self, args, hub):
        self.args, self.hub = args, hub
        self.https_server = None

    async def start(self):
        args, hub = self.args, self.hub
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(args.cert, args.key)
        broker_config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{args.mqtt_port}", "ssl": True,
                                      "certfile": args.cert, "keyfile": args.key}},
            "plugins": {},  # no amqtt plugins: authentication and ACLs are the Hub's
        }
        self.broker = HubBroker(hub, broker_config)
        hub.broker = self.broker
        await self.broker.start()
        self.mqtt_port = self.broker._servers["default"].instance.sockets[0].getsockname()[1]
        self.https_port = args.https_port
        await self.listen_https()
        control = Control(hub, self)
        self.control_server = await asyncio.start_server(
            lambda r, w: serve_http(r, w, control.route), "127.0.0.1", args.control_port)
        self.control_port = self.control_server.sockets[0].getsockname()[1]

    async def listen_https(self):
        if self.https_server is None:
            scope = ScopeApi(self.hub)
            self.https_server = await asyncio.start_server(
                lambda r, w: serve_http(r, w, scope.route), "127.0.0.1", self.https_port, ssl=self.tls,
                reuse_address=True)
            self.https_port = self.https_server.sockets[0].getsockname()[1]

    async def down(self):
        log.info("cloud down: listeners closed, every connection cut")
        await self.broker.stop_listening()
        if self.https_server is not None:
            self.https_server.close()
            self.https_server = None
        for conn in list(self.hub.conns.values()):
            conn.abort("cloud down")

    async def up(self):
        await self.broker.listen(self.mqtt_port)
        await self.listen_https()
        log.info("cloud up again on mqtt %d, https %d", self.mqtt_port, self.https_port)


async def watch_parent():
    """Exit when the process that started us goes away (a killed test must not leave us behind)."""
    parent = os.getppid()
    while True:
        await asyncio.sleep(1)
        if os.getppid() != parent:
            log.info("parent process gone: exiting")
            os._exit(0)


async def main():
    parser = argparse.ArgumentParser(description="A scripted Azure IoT Hub for tinyedge's tests")
    parser.add_argument("--config", required=True)
    parser.add_argument("--cert", required=True, help="server certificate (PEM, for localhost)")
    parser.add_argument("--key", required=True, help="its private key (PEM)")
    parser.add_argument("--mqtt-port", type=int, default=0)
    parser.add_argument("--https-port", type=int, default=0)
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="log amqtt's own debug output too")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("amqtt").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    with open(args.config) as f:
        hub = Hub(json.load(f))
    app = App(args, hub)
    await app.start()
    asyncio.get_running_loop().set_exception_handler(
        lambda loop, ctx: log.info("asyncio: %s %r", ctx.get("message"), ctx.get("exception")))
    print(f"READY mqtt={app.mqtt_port} https={app.https_port} control={app.control_port}", flush=True)
    log.info("scripted IoT Hub %s (edge device %s) with %d identities: mqtt %d, https %d, control %d",
             hub.hostname, hub.edge_device, len(hub.identities), app.mqtt_port, app.https_port, app.control_port)
    await watch_parent()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
