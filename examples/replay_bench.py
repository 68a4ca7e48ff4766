#!/usr/bin/env python3
# Replay rate: N succeeded noop jobs through a release daemon, then replay --dry-run, replay, and
# replay again (all duplicates). cargo build --release; python3 examples/replay_bench.py 100000
# (DUEJOB_BIN=path runs another build, e.g. a baseline)
import json, socket, subprocess, time, os, sys, shutil
B = os.environ.get("DUEJOB_BIN") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "duejob")
d = "/tmp/duejob-replay-bench"
shutil.rmtree(d, ignore_errors=True); os.makedirs(d)
p = subprocess.Popen([B, "serve", "--data", d + "/data"], stderr=open(d + "/log", "w"))
sock = d + "/data/duejob.sock"
while not os.path.exists(sock): time.sleep(0.05)
s = socket.socket(socket.AF_UNIX); s.connect(sock); f = s.makefile("rw")
def call(o):
    f.write(json.dumps(o) + "\n"); f.flush(); return json.loads(f.readline())
N = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
for i in range(N // 10000):
    r = call({"op": "submit_batch", "jobs": [{"queue": "default", "kind": "noop"}] * 10000}); assert r["ok"], r
while True:
    st = call({"op": "stats"})
    if st["totals"]["succeeded"] == N and st["catalog"]["lag_records"] == 0: break
    time.sleep(0.2)
t = time.time(); r = call({"op": "replay", "since": 0, "until": 4102444800000, "dry_run": True}); dt = time.time() - t
print(f"dry run over {N} jobs: {dt:.2f} s ({N/dt:.0f} jobs/s), would enqueue {r['enqueued']}")
t = time.time(); r = call({"op": "replay", "since": 0, "until": 4102444800000}); dt = time.time() - t
print(f"replay of {N} jobs: {dt:.2f} s ({r['enqueued']/dt:.0f} jobs/s enqueued), enqueued {r['enqueued']}")
def caught_up():
    while call({"op": "stats"})["catalog"]["lag_records"] > 0: time.sleep(0.2)
caught_up()
t = time.time(); r = call({"op": "replay", "since": 0, "until": 4102444800000}); dt = time.time() - t
assert r["ok"], r
print(f"the same again: {dt:.2f} s, enqueued {r['enqueued']}, skipped {r['skipped']}")
t = time.time(); r = call({"op": "jobs", "states": ["dead"], "limit": 100}); dt = time.time() - t
print(f"jobs --state dead (none) over {2*N} jobs: {dt*1000:.0f} ms")
p.terminate(); p.wait()
