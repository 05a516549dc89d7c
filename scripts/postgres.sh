#!/usr/bin/env bash
# Make sure the PostgreSQL the fleet tests use answers on 127.0.0.1:5432 (database `test`, trust
# auth: what this machine kind provides). Starts the local cluster if it is installed but down.
set -euo pipefail
ready() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
if ready; then
  echo "postgres.sh: PostgreSQL is accepting connections on 127.0.0.1:5432"
  exit 0
fi
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  echo "postgres.sh: starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 50); do ready && { echo "postgres.sh: up"; exit 0; }; sleep 0.2; done
fi
echo "postgres.sh: PostgreSQL is not reachable on 127.0.0.1:5432; the fleet's PostgreSQL tests will fail" >&2
exit 1
