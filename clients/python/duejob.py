"""A client for duejob's Unix-socket protocol (docs/protocol.md). One file, standard library only.

    from duejob import Client
    c = Client()                                   # $DUEJOB_SOCKET or ./duejob-data/duejob.sock
    job = c.submit("notifications", "exec", {"argv": ["send-sms", "+15551234", "hi"]},
                   key="sms-order-42")             # returns once the job is durable
    print(c.wait(job["id"])["state"])              # succeeded, dead or cancelled

Reconnecting: when the daemon restarts, the next request reconnects (for up to
`reconnect_timeout` seconds) and is sent again if that is safe: a request that never reached the
daemon, a read-only one (status, stats, ...), or a submit whose jobs all carry a `key` (the daemon
discards the duplicate, and answers with the first job's id). A keyless submit whose reply was
lost raises ConnectionLost: it may or may not be in the log, and only its key could have told.
"""

import json
import os
import socket
import time

__all__ = ["Client", "DuejobError", "ConnectionLost", "Timeout"] + [
    "InvalidJson", "BadRequest", "LineTooLong", "UnknownOp", "UnknownQueue", "UnknownKind",
    "InvalidPayload", "NotFound", "WrongState", "WalFailed", "WalUncertain", "ShuttingDown",
    "Forbidden", "Busy", "CheckpointFailed", "CatalogUnavailable",
]

DEFAULT_SOCKET = "./duejob-data/duejob.sock"
TERMINAL = ("succeeded", "dead", "cancelled")


class DuejobError(Exception):
    """The daemon refused a request: `code` is the protocol's error code."""

    code = None

    def __init__(self, message, code=None, reply=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.reply = reply or {}


class ConnectionLost(DuejobError):
    """The daemon went away and the request could not safely be sent again."""

    code = "connection_lost"


class Timeout(DuejobError):
    """wait() gave up before the job ended."""

    code = "timeout"


def _error_class(name, code):
    return type(name, (DuejobError,), {"code": code, "__doc__": "Error code `%s`." % code})


_CODES = {}
for _name, _code in [
    ("InvalidJson", "invalid_json"), ("BadRequest", "bad_request"),
    ("LineTooLong", "line_too_long"), ("UnknownOp", "unknown_op"),
    ("UnknownQueue", "unknown_queue"), ("UnknownKind", "unknown_kind"),
    ("InvalidPayload", "invalid_payload"), ("NotFound", "not_found"),
    ("WrongState", "wrong_state"), ("WalFailed", "wal_failed"),
    ("WalUncertain", "wal_uncertain"), ("ShuttingDown", "shutting_down"),
    ("Forbidden", "forbidden"), ("Busy", "busy"), ("CheckpointFailed", "checkpoint_failed"),
    ("CatalogUnavailable", "catalog_unavailable"),
]:
    _CODES[_code] = globals()[_name] = _error_class(_name, _code)

# Refusals that recorded nothing and pass once the daemon is back: wait and send again.
_TRANSIENT = ("shutting_down", "busy")
# Ops that change nothing: always safe to send again.
_READ_ONLY = ("hello", "status", "stats", "log", "jobs", "dead_list", "alerts")


def _error(reply):
    err = reply.get("error") or {}
    code = err.get("code", "unknown")
    cls = _CODES.get(code, DuejobError)
    return cls(err.get("message", "request refused"), code, reply)


def _safe_to_resend(req):
    op = req.get("op")
    if op in _READ_ONLY:
        return True
    if op == "submit":
        return bool(req.get("key"))
    if op == "submit_batch":
        return all(j.get("key") for j in req.get("jobs", []))
    return False


class Client:
    """One connection to a daemon; not for use by several threads at once."""

    def __init__(self, path=None, reconnect_timeout=10.0, name="duejob.py"):
        self.path = path or os.environ.get("DUEJOB_SOCKET") or DEFAULT_SOCKET
        self.reconnect_timeout = reconnect_timeout
        self.name = name
        self._sock = None
        self._buf = b""
        try:
            self._connect()
        except OSError as e:
            raise ConnectionLost(
                "cannot connect to %s: %s (is the daemon running? `duejob serve`; "
                "DUEJOB_SOCKET names another socket)" % (self.path, e)) from e

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- the ops --------------------------------------------------------------------------

    def submit(self, queue, kind, payload=None, key=None, due_in_ms=None, delay_ms=None,
               max_attempts=None, timeout_ms=None):
        """Submits one job; returns {"id", "lsn", "duplicate"} once it is durable."""
        return self.request(_job(queue, kind, payload, key, due_in_ms, delay_ms, max_attempts,
                                 timeout_ms, op="submit"))

    def submit_batch(self, jobs):
        """Submits jobs atomically (all or none; each a dict like submit's arguments); returns
        their ids once durable."""
        return self.request({"op": "submit_batch", "jobs": [_job(**j) for j in jobs]})["ids"]

    def submit_many(self, jobs):
        """Pipelines one submit per job (sent together, answered in order): returns, per job,
        its reply or the DuejobError it got."""
        return self.pipeline([_job(op="submit", **j) for j in jobs])

    def status(self, job_id):
        """The job: its state and every attempt."""
        return self.request({"op": "status", "id": job_id})["job"]

    def stats(self):
        return self.request({"op": "stats"})

    def cancel(self, job_id):
        return self.request({"op": "cancel", "id": job_id})

    def wait(self, job_id, timeout=60.0, states=TERMINAL, poll=0.05):
        """Polls until the job is in one of `states` (by default: ended); returns it."""
        until = time.monotonic() + timeout
        while True:
            job = self.status(job_id)
            if job["state"] in states:
                return job
            if time.monotonic() >= until:
                raise Timeout("job %d is still %s after %.1f s" % (job_id, job["state"], timeout))
            time.sleep(poll)

    # --- the protocol ---------------------------------------------------------------------

    def request(self, req):
        """Sends one request; returns its ok reply or raises its DuejobError."""
        reply = self.pipeline([req])[0]
        if isinstance(reply, DuejobError):
            raise reply
        return reply

    def pipeline(self, reqs):
        """Sends requests in one write and reads their replies in order; each is the reply or
        the DuejobError it got. Reconnects and sends again what is safe (see the module doc)."""
        deadline = time.monotonic() + self.reconnect_timeout
        data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in reqs)
        safe = all(_safe_to_resend(r) for r in reqs)
        while True:
            written = 0
            try:
                if self._sock is None:
                    self._connect()
                while written < len(data):
                    written += self._sock.send(data[written:])
                replies = [self._read_reply() for _ in reqs]
            except OSError as e:
                self.close()
                # Not a byte reached a connection that was closed already: nothing was read.
                if written > 0 and not safe:
                    raise ConnectionLost(
                        "the daemon went away before answering (%s); a submit without a key "
                        "may or may not be in the log" % e) from e
                self._pause(deadline, e)
                continue
            out = [r if r.get("ok") else _error(r) for r in replies]
            # shutting_down and busy recorded nothing: once the daemon is back, send again
            # (if all of it may go twice, or none of it went through).
            transient = [r for r in out if isinstance(r, DuejobError) and r.code in _TRANSIENT]
            if transient and (safe or len(transient) == len(out)):
                self.close()
                self._pause(deadline, transient[0])
                continue
            return out

    def _pause(self, deadline, cause):
        if time.monotonic() >= deadline:
            if isinstance(cause, DuejobError):
                raise cause
            raise ConnectionLost("cannot reach the daemon at %s: %s" % (self.path, cause))
        time.sleep(0.05)

    def _connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.path)
        except OSError:
            s.close()
            raise
        self._sock = s
        self._buf = b""
        self._sock.sendall(json.dumps({"op": "hello", "client": self.name}).encode() + b"\n")
        hello = self._read_reply()
        if not hello.get("ok"):
            err = _error(hello)
            self.close()
            if err.code in _TRANSIENT:
                raise ConnectionRefusedError(err.message)
            raise err

    def _read_reply(self):
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("the daemon closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)


def _job(queue, kind, payload=None, key=None, due_in_ms=None, delay_ms=None, max_attempts=None,
         timeout_ms=None, op=None):
    j = {"queue": queue, "kind": kind}
    if op:
        j = {"op": op, **j}
    for name, value in [("payload", payload), ("key", key), ("due_in_ms", due_in_ms),
                        ("delay_ms", delay_ms), ("max_attempts", max_attempts),
                        ("timeout_ms", timeout_ms)]:
        if value is not None:
            j[name] = value
    return j
