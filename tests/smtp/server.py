"""A real SMTP server (aiosmtpd) for duejob's email tests and bench.

Each accepted message is stored as NNNNNN.json (mail_from, rcpt_tos, data) in --dir, written to a
temporary name first and renamed, so a reader never sees half a message. Behaviour on purpose:
- a recipient whose local part starts with "reject" gets 550 (permanent);
- one starting with "tempfail" gets 451 (temporary);
- --fault-file PATH: while PATH exists, every recipient gets 451 (an outage that comes and goes);
- --delay-ms N stores the message, then waits N ms before answering DATA (so that a sender
  killed in that window has had its mail accepted without hearing so: the at-least-once case);
- --user/--password require AUTH PLAIN/LOGIN with those credentials;
- --tls starttls|implicit with --cert/--key: STARTTLS required before MAIL, or TLS from the
  first byte.
Prints "READY <port>" on stdout once it accepts connections; runs until killed.
"""

import argparse
import asyncio
import itertools
import json
import os
import signal
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Store:
    def __init__(self, directory, delay_ms, fault_file=None):
        self.dir = directory
        self.delay = delay_ms / 1000.0
        self.fault_file = fault_file
        self.lock = threading.Lock()
        existing = [int(n[:-5]) for n in os.listdir(directory) if n.endswith(".json")]
        self.counter = itertools.count(max(existing, default=0) + 1)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if self.fault_file and os.path.exists(self.fault_file):
            return "451 4.3.0 <%s>: try again later (test outage)" % address
        if local.startswith("reject"):
            return "550 5.1.1 <%s>: mailbox unavailable (test rejection)" % address
        if local.startswith("tempfail"):
            return "451 4.3.0 <%s>: try again later (test deferral)" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            n = next(self.counter)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", "replace"),
        }
        tmp = os.path.join(self.dir, "%06d.tmp" % n)
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(self.dir, "%06d.json" % n))
        if self.delay:
            await asyncio.sleep(self.delay)
        return "250 OK stored as %d" % n


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--delay-ms", type=int, default=0)
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--tls", choices=["starttls", "implicit"])
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--fault-file")
    a = p.parse_args()
    kwargs = {}
    if a.tls:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.cert, a.key)
        if a.tls == "starttls":
            kwargs.update(tls_context=ctx, require_starttls=True)
        else:
            kwargs.update(ssl_context=ctx)
    if a.user is not None:
        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login.decode() == a.user
                and auth_data.password.decode() == a.password
            )
            return AuthResult(success=ok, handled=False)

        kwargs.update(authenticator=authenticator, auth_required=True, auth_require_tls=False)
    controller = Controller(
        Store(a.dir, a.delay_ms, a.fault_file), hostname="127.0.0.1", port=a.port, **kwargs
    )
    controller.start()
    print("READY %d" % a.port, flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    controller.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
