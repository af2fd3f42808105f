#!/usr/bin/python3
"""The AMQP endpoint's error paths, driven by a generic AMQP 1.0 client (Debian's
python3-qpid-proton, blocking API) and a raw TLS socket, for tests/amqp.rs.

Environment: PORT, CA (the edge CA file), HUB, TOKEN (a valid SAS token of gw/sender),
SHORT_TOKEN (one that expires in a few seconds), EXPIRED (one that has expired).
Prints one line per check, "NAME RESULT", and "done" at the end.
"""
import os
import socket
import ssl
import sys
import time

from proton import ConnectionException, Message, SSLDomain
from proton.utils import BlockingConnection, LinkDetached, SendException

PORT = int(os.environ["PORT"])
CA = os.environ["CA"]
HUB = os.environ["HUB"]
SENDER = "/devices/gw/modules/sender"
AUDIENCE = HUB + SENDER


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def connect():
    domain = SSLDomain(SSLDomain.MODE_CLIENT)
    domain.set_trusted_ca_db(CA)
    domain.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
    return BlockingConnection(
        "amqps://localhost:%d" % PORT, timeout=10, ssl_domain=domain, allowed_mechs="ANONYMOUS", sasl_enabled=True
    )


def put_token(conn, token, audience=AUDIENCE):
    sender = conn.create_sender("$cbs")
    receiver = conn.create_receiver("$cbs")
    request = Message(
        body=token,
        id="put-1",
        reply_to="cbs",
        properties={"operation": "put-token", "type": "servicebus.windows.net:sastoken", "name": audience},
    )
    sender.send(request, timeout=10)
    # The answer comes settled: nothing to accept.
    reply = receiver.receive(timeout=10)
    return int(reply.properties.get("status-code"))


def condition_of(error):
    link = getattr(error, "link", None)
    condition = link.remote_condition if link is not None else None
    return condition.name if condition is not None else "none:" + str(error)


def attach_and_send(conn, address):
    """Attaches a sender to `address` and sends one message: "ok" or the error condition."""
    try:
        sender = conn.create_sender(address)
        sender.send(Message(body=b"probe", id="probe"), timeout=10)
        sender.close()
        return "ok"
    except (LinkDetached, SendException) as e:
        return condition_of(e)


def attach_receiver(conn, address):
    try:
        receiver = conn.create_receiver(address)
        # The refusal (attach without source, then detach) may follow the attach.
        time.sleep(0.5)
        receiver.receive(timeout=0.5)
        return "ok"
    except LinkDetached as e:
        return condition_of(e)
    except Exception as e:  # a timeout: the link stayed attached
        return "attached:" + type(e).__name__


def raw_garbage(after_header):
    """A TLS socket sending the AMQP header, then `after_header`: the bytes the hub answers."""
    context = ssl.create_default_context(cafile=CA)
    with socket.create_connection(("localhost", PORT), timeout=10) as plain:
        with context.wrap_socket(plain, server_hostname="localhost") as tls:
            tls.sendall(b"AMQP\x00\x01\x00\x00")
            got = b""
            while len(got) < 8:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                got += chunk
            tls.sendall(after_header)
            tls.settimeout(10)
            try:
                while True:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    got += chunk
            except (socket.timeout, ssl.SSLError, ConnectionError):
                pass
            return got


def main():
    token, short, expired = os.environ["TOKEN"], os.environ["SHORT_TOKEN"], os.environ["EXPIRED"]

    conn = connect()
    say("put-token %s" % put_token(conn, token))
    # Links the hub does not serve, or of another identity: refused on that link only.
    say("unknown-address %s" % attach_and_send(conn, SENDER + "/messages/nowhere"))
    say("unknown-node %s" % attach_and_send(conn, "/queues/q1"))
    say("other-identity %s" % attach_and_send(conn, "/devices/gw/modules/receiver/messages/events"))
    say("other-identity-inputs %s" % attach_receiver(conn, "/devices/gw/modules/receiver/messages/events"))
    # The same connection still works.
    say("telemetry-after %s" % attach_and_send(conn, SENDER + "/messages/events"))
    conn.close()

    # An expired token is refused at put-token; the link then has no token.
    conn = connect()
    say("expired-put-token %s" % put_token(conn, expired))
    say("expired-attach %s" % attach_and_send(conn, SENDER + "/messages/events"))
    conn.close()

    # A token that expires while the link is attached: the link is detached at expiry.
    conn = connect()
    say("short-put-token %s" % put_token(conn, short))
    sender = conn.create_sender(SENDER + "/messages/events")
    sender.send(Message(body=b"before", id="before"), timeout=10)
    say("short-before ok")
    time.sleep(6)
    try:
        sender.send(Message(body=b"after", id="after"), timeout=10)
        say("short-after ok")
    except (LinkDetached, SendException) as e:
        say("short-after %s" % condition_of(e))
    conn.close()

    # Malformed frames after the header: a frame size below 8, then a frame that does not
    # decode; each connection is closed with the error (its name is in the close frame).
    tiny = raw_garbage(b"\x00\x00\x00\x04\x02\x00\x00\x00")
    say("framing-error %s" % ("amqp:connection:framing-error" in tiny.decode("latin-1")))
    bad_body = raw_garbage(b"\x00\x00\x00\x10\x02\x00\x00\x00" + b"\x00\x53\x10\xff\xff\xff\xff\xff")
    text = bad_body.decode("latin-1")
    say("decode-error %s" % ("amqp:decode-error" in text or "amqp:connection:framing-error" in text))
    # A wrong protocol header: answered with the AMQP header, then closed.
    context = ssl.create_default_context(cafile=CA)
    with socket.create_connection(("localhost", PORT), timeout=10) as plain:
        with context.wrap_socket(plain, server_hostname="localhost") as tls:
            tls.sendall(b"HTTP/1.1")
            answer = tls.recv(64)
            say("bad-header %s" % (answer[:8] == b"AMQP\x00\x01\x00\x00"))

    # Other connections are not disturbed: a new one works.
    conn = connect()
    put_token(conn, token)
    say("new-connection %s" % attach_and_send(conn, SENDER + "/messages/events"))
    conn.close()
    say("done")


if __name__ == "__main__":
    try:
        main()
    except ConnectionException as e:
        say("error connection: %s" % e)
        sys.exit(2)
