#!/usr/bin/env bash
# Checks deploy/klinegate.service with `systemd-analyze verify`, pointing its
# ExecStart at the binary just built (verify needs the executable to exist).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v systemd-analyze >/dev/null 2>&1; then
  apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null 2>&1 || true
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "systemd unit: systemd-analyze could not be installed; not verified"; exit 0
fi
bin="$PWD/target/debug/klinegate"
[ -x "$bin" ] || cargo build --locked --bin klinegate
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
sed "s#/usr/local/bin/klinegate#$bin#" deploy/klinegate.service > "$dir/klinegate.service"
out=$(systemd-analyze verify "$dir/klinegate.service" 2>&1 || true)
# Outside a booted systemd (containers, CI) verify also reports the host's own units;
# only lines about our unit count. A missing user is fine here (created at install).
ours=$(printf '%s\n' "$out" | grep 'klinegate.service' | grep -v "Failed to resolve user\|Failed to resolve group\|User=klinegate\|Group=klinegate" || true)
if [ -n "$ours" ]; then
  printf 'systemd unit: verify failed:\n%s\n' "$ours"; exit 1
fi
echo "systemd unit: deploy/klinegate.service verified"
