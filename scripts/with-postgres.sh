#!/usr/bin/env bash
# Runs a command with a throwaway PostgreSQL server for the tests:
#
#   scripts/with-postgres.sh go test ./...
#
# It makes a data directory under a temporary directory, starts the server
# from Debian's postgresql package (/usr/lib/postgresql/*/bin) on a free
# loopback port with no other listener (no TCP beyond 127.0.0.1, its Unix
# socket in the temporary directory), exports OPENCUSTODY_TEST_POSTGRES for
# the command, and stops the server and removes the directory when the
# command ends, whether it passed, failed or was interrupted.
#
# PostgreSQL refuses to run as root: as root, the server runs as the
# 'postgres' user (made by the package) and owns its data directory.
set -euo pipefail

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bindir" ] && command -v pg_ctl >/dev/null 2>&1; then
  bindir=$(dirname "$(command -v pg_ctl)") # Homebrew and others put it on PATH
fi
if [ -z "$bindir" ] || [ ! -x "$bindir/pg_ctl" ]; then
  echo "with-postgres: no PostgreSQL server in /usr/lib/postgresql/*/bin; run 'make setup' (Debian package postgresql)" >&2
  exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/opencustody-pg.XXXXXX")
as=()
if [ "$(id -u)" -eq 0 ]; then
  if ! id postgres >/dev/null 2>&1; then
    echo "with-postgres: running as root and there is no 'postgres' user to run the server as" >&2
    exit 1
  fi
  chown postgres: "$tmp"
  chmod 0700 "$tmp"
  as=(runuser -u postgres --)
fi
data=$tmp/data
log=$tmp/server.log

started=false
cleanup() {
  status=$?
  if $started; then
    "${as[@]}" "$bindir/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  if [ $status -ne 0 ] && [ -f "$log" ] && ! $started; then
    echo "with-postgres: server log:" >&2
    cat "$log" >&2 || true
  fi
  rm -rf "$tmp"
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"${as[@]}" "$bindir/initdb" -D "$data" -U postgres -A trust --no-sync -E UTF8 --locale=C.UTF-8 >"$tmp/initdb.log" 2>&1 || {
  cat "$tmp/initdb.log" >&2; exit 1; }

# A free port: try a few, since another server may take one between the
# check and the start.
for attempt in 1 2 3 4 5 6 7 8; do
  port=$(( 20000 + (RANDOM % 20000) ))
  # fsync=off: the data is thrown away, and the tests kill hsmd, never
  # this server.
  if "${as[@]}" "$bindir/pg_ctl" -D "$data" -l "$log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $tmp -c fsync=off -c max_connections=200" start >/dev/null 2>&1; then
    started=true
    break
  fi
  if ! grep -q "could not bind\|already in use" "$log" 2>/dev/null; then
    cat "$log" >&2; exit 1
  fi
done
if ! $started; then
  echo "with-postgres: could not start the server on a free port" >&2
  cat "$log" >&2
  exit 1
fi

export OPENCUSTODY_TEST_POSTGRES="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
echo "with-postgres: PostgreSQL $(basename "$(dirname "$bindir")") on 127.0.0.1:$port (data in $data)"
"$@"
