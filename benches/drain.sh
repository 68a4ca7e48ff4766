#!/usr/bin/env bash
# The full cycle's execution half on its own: ~1M jobs submitted to a paused `bulk` queue by
# `loadgen --mode cycle` (3 s of 4 connections × 100 in flight), then `queue resume bulk`; prints
# the time from the resume until loadgen has seen every job's completion recorded, and loadgen's
# own full-cycle rate. Not part of CI. BIN: the duejob binary (default target/release/duejob).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/duejob}
cargo build --release --quiet --example loadgen
D=$(mktemp -d /tmp/duejob-drain.XXXXXX)
"$BIN" serve --data "$D" --socket "$D/s.sock" --workers 4 2>/dev/null &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 200); do [ -S "$D/s.sock" ] && break; sleep 0.05; done
"$BIN" queue pause bulk --socket "$D/s.sock" >/dev/null
./target/release/examples/loadgen --socket "$D/s.sock" --mode cycle --conns 4 --window 100 \
  --seconds 3 >"$D/loadgen.out" 2>&1 &
LG=$!
sleep 3.5
t0=$(date +%s.%N)
"$BIN" queue resume bulk --socket "$D/s.sock" >/dev/null
wait $LG
t1=$(date +%s.%N)
echo "drain: $(echo "$t1 - $t0" | bc) s; loadgen: $(grep -o '[0-9]* full cycles/s' "$D/loadgen.out")"
