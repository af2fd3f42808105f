#!/usr/bin/python3
"""AMQP load for benches/amqp.rs: a generic AMQP 1.0 client (Debian's python3-qpid-proton,
event API, one thread) of tinyedge's `[hub] amqps`.

  amqp_load.py send PORT CA AUDIENCE TOKEN ADDRESS COUNT SIZE WINDOW
      One connection (TLS, SASL ANONYMOUS, CBS put-token for AUDIENCE), one sender link on
      ADDRESS; sends COUNT messages of SIZE bytes unsettled (a data section), at most WINDOW
      unsettled at a time and never beyond the hub's credit, counting the hub's dispositions.
      Prints "START" right before the first transfer, then one JSON line: sent, accepted,
      rejected, released, the seconds from the first transfer to the last disposition and the
      process's CPU seconds (user + system) over the same span.

  amqp_load.py idle PORT CA HUB COUNT TOKEN0 TOKEN1 ...
      COUNT connections as leaf devices leaf-0.. (TOKENi the SAS token of leaf-i), each with
      CBS put-token, its $cbs sender and receiver links and one attached telemetry sender link
      (/devices/leaf-i/messages/events), opened at most 32 at a time (the hub's
      max_unauthenticated is 64). Prints "READY n" when all are up, then holds them open (the
      event loop answers heartbeats) until killed.

  amqp_load.py idle-mqtts PORT CA HUB COUNT TOKEN0 TOKEN1 ...
      The same leaf devices over MQTT with TLS (`[hub] mqtts`): TLS, CONNECT (keep-alive
      600 s), CONNACK, one after the other; "READY n", then held open until killed. The
      comparison that separates the TLS session from the AMQP state.
"""
import json
import os
import socket
import ssl
import sys
import time

from proton import Message, SSLDomain
from proton.handlers import MessagingHandler
from proton.reactor import Container

PENDING_MAX = 32


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def domain(ca):
    d = SSLDomain(SSLDomain.MODE_CLIENT)
    d.set_trusted_ca_db(ca)
    d.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
    return d


def cpu():
    t = os.times()
    return t.user + t.system


def put_token_request(token, audience):
    return Message(
        body=token,
        id="put-1",
        reply_to="cbs",
        properties={"operation": "put-token", "type": "servicebus.windows.net:sastoken", "name": audience},
    )


class Authenticated(MessagingHandler):
    """One connection: put-token on $cbs, then one sender link on `address`; calls
    `self.attached(sender)` once the hub has attached it."""

    def __init__(self, port, ca, audience, token, address):
        super().__init__(prefetch=10, auto_accept=True, auto_settle=True)
        self.port, self.ca, self.audience, self.token, self.address = port, ca, audience, token, address
        self.cbs_tx = self.cbs_rx = self.sender = None
        self.requested = False

    def open(self, container):
        conn = container.connect(
            "amqps://localhost:%d" % self.port,
            handler=self,
            reconnect=False,
            ssl_domain=domain(self.ca),
            sasl_enabled=True,
            allowed_mechs="ANONYMOUS",
        )
        self.cbs_tx = container.create_sender(conn, "$cbs")
        self.cbs_rx = container.create_receiver(conn, "$cbs")

    def on_sendable(self, event):
        if event.sender == self.cbs_tx and not self.requested:
            self.requested = True
            self.cbs_tx.send(put_token_request(self.token, self.audience))
        elif event.sender == self.sender:
            self.pump()

    def on_message(self, event):
        if event.receiver != self.cbs_rx:
            return
        status = int(event.message.properties.get("status-code", 0))
        if status != 200:
            sys.stderr.write("put-token %s: status %d\n" % (self.audience, status))
            sys.exit(1)
        self.sender = event.container.create_sender(event.connection, self.address)

    def on_link_opened(self, event):
        if event.link == self.sender and self.sender is not None:
            self.attached(self.sender)

    def on_link_error(self, event):
        sys.stderr.write("link error on %s: %s\n" % (event.link.name, event.link.remote_condition))
        sys.exit(1)

    def on_transport_error(self, event):
        sys.stderr.write("transport error: %s\n" % event.transport.condition)
        sys.exit(1)

    def attached(self, sender):
        pass

    def pump(self):
        pass


class Send(Authenticated):
    def __init__(self, port, ca, audience, token, address, count, size, window):
        super().__init__(port, ca, audience, token, address)
        self.count, self.window = count, window
        self.encoded = Message(body=b"x" * size, inferred=True).encode()
        self.sent = self.settled = self.accepted = self.rejected = self.released = 0
        self.started = None
        self.result = None

    def on_start(self, event):
        self.open(event.container)

    def attached(self, sender):
        say("START")
        self.started = (time.monotonic(), cpu())
        self.pump()

    def pump(self):
        s = self.sender
        if s is None or self.started is None:
            return
        while self.sent < self.count and s.credit > 0 and self.sent - self.settled < self.window:
            s.delivery(str(self.sent))
            s.stream(self.encoded)
            s.advance()
            self.sent += 1

    def on_accepted(self, event):
        self.accepted += 1

    def on_rejected(self, event):
        self.rejected += 1

    def on_released(self, event):
        self.released += 1

    def on_settled(self, event):
        self.settled += 1
        if self.settled == self.count:
            wall, used = time.monotonic() - self.started[0], cpu() - self.started[1]
            self.result = {
                "sent": self.sent,
                "accepted": self.accepted,
                "rejected": self.rejected,
                "released": self.released,
                "secs": wall,
                "cpu_secs": used,
            }
            event.connection.close()
        else:
            self.pump()


class Leaf(Authenticated):
    def __init__(self, parent, port, ca, hub, device, token):
        super().__init__(port, ca, "%s/devices/%s" % (hub, device), token, "/devices/%s/messages/events" % device)
        self.parent = parent

    def attached(self, sender):
        self.parent.ready(self)


class Idle(MessagingHandler):
    def __init__(self, port, ca, hub, tokens):
        super().__init__()
        self.leaves = [Leaf(self, port, ca, hub, "leaf-%d" % i, t) for i, t in enumerate(tokens)]
        self.next = 0
        self.up = 0
        self.container = None

    def on_start(self, event):
        self.container = event.container
        for _ in range(min(PENDING_MAX, len(self.leaves))):
            self.open_next()

    def open_next(self):
        if self.next < len(self.leaves):
            self.leaves[self.next].open(self.container)
            self.next += 1

    def ready(self, leaf):
        self.up += 1
        if self.up == len(self.leaves):
            say("READY %d" % self.up)
        self.open_next()


def mqtt_string(text):
    b = text.encode()
    return len(b).to_bytes(2, "big") + b


def mqtt_connect(client_id, username, password):
    # MQTT 3.1.1: protocol name, level 4, flags username | password | clean session, keep-alive.
    body = mqtt_string("MQTT") + bytes([4, 0xC2]) + (600).to_bytes(2, "big")
    body += mqtt_string(client_id) + mqtt_string(username) + mqtt_string(password)
    length, n = b"", len(body)
    while True:
        byte, n = n % 128, n // 128
        length += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    return b"\x10" + length + body


def mqtts_idle(port, ca, hub, tokens):
    context = ssl.create_default_context(cafile=ca)
    held = []
    for i, token in enumerate(tokens):
        device = "leaf-%d" % i
        tls = context.wrap_socket(socket.create_connection(("localhost", port), timeout=10), server_hostname="localhost")
        tls.sendall(mqtt_connect(device, "%s/%s/?api-version=2021-04-12" % (hub, device), token))
        ack = b""
        while len(ack) < 4:
            chunk = tls.recv(4 - len(ack))
            if not chunk:
                sys.exit("%s: connection closed before CONNACK" % device)
            ack += chunk
        if ack[0] != 0x20 or ack[3] != 0:
            sys.exit("%s: CONNACK %r" % (device, ack))
        held.append(tls)
    say("READY %d" % len(held))
    while True:
        time.sleep(3600)


def main():
    mode = sys.argv[1]
    if mode == "send":
        port, ca, audience, token, address, count, size, window = sys.argv[2:10]
        handler = Send(int(port), ca, audience, token, address, int(count), int(size), int(window))
        Container(handler).run()
        if handler.result is None:
            sys.stderr.write("sender ended early: %d sent, %d settled\n" % (handler.sent, handler.settled))
            sys.exit(1)
        say(json.dumps(handler.result))
    elif mode == "idle":
        port, ca, hub, count = sys.argv[2:6]
        tokens = sys.argv[6:]
        assert len(tokens) == int(count), "one token per leaf"
        Container(Idle(int(port), ca, hub, tokens)).run()
    elif mode == "idle-mqtts":
        port, ca, hub, count = sys.argv[2:6]
        tokens = sys.argv[6:]
        assert len(tokens) == int(count), "one token per leaf"
        mqtts_idle(int(port), ca, hub, tokens)
    else:
        sys.exit("mode: send | idle | idle-mqtts")


if __name__ == "__main__":
    main()
