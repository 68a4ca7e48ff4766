#!/usr/bin/env bash
# duejob beside beanstalkd and Redis on this machine, in one run (not part of CI).
# Installs the peers from Debian if missing, builds duejob, prints one markdown table.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v beanstalkd >/dev/null || ! command -v redis-server >/dev/null; then
  apt-get update -qq && apt-get install -y -qq beanstalkd redis-server
fi
# The Debian packages start services on TCP; stop them so only this run loads the machine.
(service redis-server stop; service beanstalkd stop) >/dev/null 2>&1 || true
cargo build --release --quiet --bin duejob --example peers
echo "machine: $(nproc) cores, $(uname -r); $(beanstalkd -v); $(redis-server --version | cut -d' ' -f1-3)"
./target/release/examples/peers "$@"
