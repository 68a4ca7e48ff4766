"""Tests of duejob.py against a real daemon: `DUEJOB_SOCKET=... python3 test_duejob.py`.

Run by the Rust suite (tests/clients.rs), which restarts the daemon when this prints `restart`
and says `go` on stdin: the client must reconnect by itself.
"""

import os
import socket
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import duejob  # noqa: E402


def expect(cls, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except cls as e:
        assert isinstance(e, duejob.DuejobError) and e.code == cls.code, e
        assert e.message, e
        return e
    raise AssertionError("expected %s" % cls.__name__)


def fake_daemon(path, answer_second):
    """A daemon that dies after reading its first request (the reply is lost), then, if
    `answer_second`, answers the next connection's request as a duplicate."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)

    def serve():
        for n in range(2 if answer_second else 1):
            conn, _ = srv.accept()
            f = conn.makefile("rwb")
            f.readline()
            f.write(b'{"ok":true,"protocol":1}\n')
            f.flush()
            f.readline()
            if n == 1:
                f.write(b'{"ok":true,"id":5,"lsn":9,"duplicate":true}\n')
                f.flush()
            f.close()
            conn.close()
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def lost_replies():
    """A reply lost after the request went out: a keyed submit is sent again (and is a
    duplicate), a keyless one raises ConnectionLost rather than risk a second job."""
    d = tempfile.mkdtemp()
    path = os.path.join(d, "fake.sock")
    t = fake_daemon(path, answer_second=False)
    c = duejob.Client(path, reconnect_timeout=5)
    e = expect(duejob.ConnectionLost, c.submit, "q", "noop")
    assert "may or may not be in the log" in e.message, e
    t.join()
    os.unlink(path)
    t = fake_daemon(path, answer_second=True)
    c = duejob.Client(path, reconnect_timeout=5)
    r = c.submit("q", "noop", key="k")
    assert r == {"ok": True, "id": 5, "lsn": 9, "duplicate": True}, r
    t.join()
    c.close()


def main():
    lost_replies()
    c = duejob.Client(reconnect_timeout=30)
    r = c.submit("default", "noop")
    assert isinstance(r["id"], int) and r["duplicate"] is False, r
    assert c.wait(r["id"])["state"] == "succeeded"
    first = r["id"]

    a = c.submit("default", "noop", key="py-k1")
    b = c.submit("default", "noop", key="py-k1")
    assert b["duplicate"] is True and b["id"] == a["id"], (a, b)

    ids = c.submit_batch([{"queue": "default", "kind": "noop"}] * 3)
    assert len(ids) == 3 and len(set(ids)) == 3, ids

    many = c.submit_many([
        {"queue": "default", "kind": "noop"},
        {"queue": "nope", "kind": "noop"},
        {"queue": "default", "kind": "noop", "delay_ms": 3600000},
    ])
    assert isinstance(many[0], dict) and many[0]["ok"], many
    assert isinstance(many[1], duejob.UnknownQueue), many
    assert c.status(many[2]["id"])["state"] == "scheduled", many

    expect(duejob.NotFound, c.status, 99999999)
    expect(duejob.InvalidPayload, c.submit, "default", "exec", {"argv": []})
    expect(duejob.UnknownKind, c.submit, "default", "fly")
    expect(duejob.WrongState, c.cancel, first)
    job = c.wait(c.submit("default", "exec", {"argv": ["sh", "-c", "exit 0"]},
                          max_attempts=1, timeout_ms=10000)["id"])
    assert job["state"] == "succeeded", job
    expect(duejob.Timeout, c.wait, many[2]["id"], timeout=0.1)

    # The daemon restarts (SIGKILL): the next requests reconnect by themselves.
    print("restart", flush=True)
    assert sys.stdin.readline().strip() == "go"
    # The first request finds the connection dead before a byte went out: sent again, keyless.
    keyless = c.submit("default", "noop")
    assert c.wait(keyless["id"])["state"] == "succeeded"
    r = c.submit("default", "noop", key="py-after-restart")
    again = c.submit("default", "noop", key="py-after-restart")
    assert again["duplicate"] is True and again["id"] == r["id"], (r, again)
    assert c.wait(r["id"])["state"] == "succeeded"
    assert c.status(first)["state"] == "succeeded"
    assert c.status(many[2]["id"])["state"] == "scheduled", "recovered"
    c.close()
    print("ok", flush=True)


if __name__ == "__main__":
    main()
