#!/usr/bin/env bash
# Makes sure the servers the tests need are up on loopback: PostgreSQL on
# 127.0.0.1:5432 (trust auth) and Redis on 127.0.0.1:6379. Each is checked
# first; a server that is down is started, and its Debian package installed
# when it is missing, so a clean machine passes too. Tests that cannot reach a
# server fail under CI=true and skip (saying so) elsewhere.
set -uo pipefail

have_port() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then apt-get update -qq >/dev/null 2>&1 || true; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1
}
wait_port() { for _ in $(seq 1 60); do have_port "$1" && return 0; sleep 0.5; done; return 1; }

if have_port 5432; then
  echo "services: PostgreSQL is up on 127.0.0.1:5432"
else
  if ! ls /etc/postgresql >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    echo "services: installing postgresql"; apt_install postgresql || echo "services: postgresql could not be installed"
  fi
  if ls /etc/postgresql >/dev/null 2>&1; then
    for v in $(ls /etc/postgresql); do
      # trust auth on loopback, as the tests expect
      hba="/etc/postgresql/$v/main/pg_hba.conf"
      if [ -f "$hba" ] && ! grep -q "klinegate-ci" "$hba"; then
        sed -i '1i host all all 127.0.0.1/32 trust # klinegate-ci\nhost all all ::1/128 trust # klinegate-ci\nlocal all all trust # klinegate-ci' "$hba"
      fi
      pg_ctlcluster --skip-systemctl-redirect "$v" main start 2>&1 | sed 's/^/services: /' || true
    done
  fi
  if wait_port 5432; then
    echo "services: PostgreSQL started"
    for db in test root; do
      su postgres -c "psql -h 127.0.0.1 -Atc \"SELECT 1 FROM pg_database WHERE datname='$db'\"" 2>/dev/null | grep -q 1 \
        || su postgres -c "createdb -h 127.0.0.1 $db" 2>/dev/null || true
    done
    su postgres -c "psql -h 127.0.0.1 -Atc \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname='root') THEN CREATE ROLE root SUPERUSER LOGIN; END IF; END \\\$\\\$\"" >/dev/null 2>&1 || true
  else
    echo "services: PostgreSQL is NOT reachable on 127.0.0.1:5432"
  fi
fi

if have_port 6379; then
  echo "services: Redis is up on 127.0.0.1:6379"
else
  command -v redis-server >/dev/null 2>&1 || { echo "services: installing redis-server"; apt_install redis-server || echo "services: redis-server could not be installed"; }
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null 2>&1 || true
  if wait_port 6379; then echo "services: Redis started"; else echo "services: Redis is NOT reachable on 127.0.0.1:6379"; fi
fi
exit 0
