# frozen_string_literal: true

# Tests of duejob.rb against a real daemon: `DUEJOB_SOCKET=... ruby test_duejob.rb`.
# Run by the Rust suite (tests/clients.rs), which restarts the daemon when this prints
# `restart` and says `go` on stdin: the client must reconnect by itself.

require_relative "duejob"
require "tmpdir"

def check(cond, what)
  raise "check failed: #{what}" unless cond
end

def expect(cls)
  yield
  raise "expected #{cls}"
rescue cls => e
  check(e.is_a?(Duejob::Error) && e.code == cls::CODE && !e.message.empty?, e.inspect)
  e
end

# A daemon that dies after reading its first request (the reply is lost), then, if
# answer_second, answers the next connection's request as a duplicate.
def fake_daemon(path, answer_second)
  srv = UNIXServer.new(path)
  Thread.new do
    (answer_second ? 2 : 1).times do |n|
      conn = srv.accept
      conn.gets
      conn.write("{\"ok\":true,\"protocol\":1}\n")
      conn.gets
      conn.write("{\"ok\":true,\"id\":5,\"lsn\":9,\"duplicate\":true}\n") if n == 1
      conn.close
    end
    srv.close
  end
end

# A reply lost after the request went out: a keyed submit is sent again (and is a duplicate),
# a keyless one raises ConnectionLost rather than risk a second job.
Dir.mktmpdir do |d|
  path = File.join(d, "fake.sock")
  t = fake_daemon(path, false)
  e = expect(Duejob::ConnectionLost) { Duejob::Client.new(path, reconnect_timeout: 5).submit("q", "noop") }
  check(e.message.include?("may or may not be in the log"), e.message)
  t.join
  File.unlink(path)
  t = fake_daemon(path, true)
  r = Duejob::Client.new(path, reconnect_timeout: 5).submit("q", "noop", key: "k")
  check(r == { "ok" => true, "id" => 5, "lsn" => 9, "duplicate" => true }, r)
  t.join
end

$stdout.sync = true
c = Duejob::Client.new(reconnect_timeout: 30)
r = c.submit("default", "noop")
check(r["id"].is_a?(Integer) && r["duplicate"] == false, r)
check(c.wait(r["id"])["state"] == "succeeded", "first job")
first = r["id"]

a = c.submit("default", "noop", key: "rb-k1")
b = c.submit("default", "noop", key: "rb-k1")
check(b["duplicate"] == true && b["id"] == a["id"], [a, b])

ids = c.submit_batch([{ queue: "default", kind: "noop" }] * 3)
check(ids.size == 3 && ids.uniq.size == 3, ids)

many = c.submit_many([
  { queue: "default", kind: "noop" },
  { queue: "nope", kind: "noop" },
  { queue: "default", kind: "noop", delay_ms: 3_600_000 }
])
check(many[0].is_a?(Hash) && many[0]["ok"], many)
check(many[1].is_a?(Duejob::UnknownQueue), many)
check(c.status(many[2]["id"])["state"] == "scheduled", many)

expect(Duejob::NotFound) { c.status(99_999_999) }
expect(Duejob::InvalidPayload) { c.submit("default", "exec", { argv: [] }) }
expect(Duejob::UnknownKind) { c.submit("default", "fly") }
expect(Duejob::WrongState) { c.cancel(first) }
job = c.wait(c.submit("default", "exec", { argv: ["sh", "-c", "exit 0"] },
                      max_attempts: 1, timeout_ms: 10_000)["id"])
check(job["state"] == "succeeded", job)
expect(Duejob::Timeout) { c.wait(many[2]["id"], timeout: 0.1) }

# The daemon restarts (SIGKILL): the next requests reconnect by themselves.
puts "restart"
check($stdin.gets&.strip == "go", "go")
# The first request finds the connection dead before a byte went out: sent again, keyless.
keyless = c.submit("default", "noop")
check(c.wait(keyless["id"])["state"] == "succeeded", "keyless after restart")
r = c.submit("default", "noop", key: "rb-after-restart")
again = c.submit("default", "noop", key: "rb-after-restart")
check(again["duplicate"] == true && again["id"] == r["id"], [r, again])
check(c.wait(r["id"])["state"] == "succeeded", "after restart")
check(c.status(first)["state"] == "succeeded", "history")
check(c.status(many[2]["id"])["state"] == "scheduled", "recovered")
c.close
puts "ok"
