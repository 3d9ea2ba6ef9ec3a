#!/usr/bin/env bash
# sockkill demo: the HAProxy problem and its fix, in a throwaway network namespace.
#
#   clients -> HAProxy 2.6 (master-worker) -> s1 127.0.0.11:9001, s2 127.0.0.12:9002
#
# A reload removes s1; the old worker keeps its connections to s1 alive (HAProxy
# < 3.1.7). `sockkill haproxy` finds and destroys exactly those, and verifies.
# Everything runs inside a namespace this script creates and deletes; the
# machine's own sockets are never touched. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --release --quiet
SK="$PWD/target/release/sockkill"

NS="sockkill-demo-$$"
DIR="$(mktemp -d /tmp/sockkill-demo.XXXXXX)"
cleanup() {
  # Every process in the demo's own namespace is one this script started: end them by pid.
  if ip netns list | grep -qw "$NS"; then
    for i in $(seq 30); do
      left=$(ip netns pids "$NS")
      [ -z "$left" ] && break
      # shellcheck disable=SC2086
      if [ "$i" -lt 20 ]; then kill $left 2>/dev/null || true; else kill -9 $left 2>/dev/null || true; fi
      sleep 0.1
    done
    ip netns del "$NS" 2>/dev/null || true
  fi
  # The client feeders run in the root namespace (their socat is in the demo's).
  for p in "${FEEDERS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Processes that were in the namespace may still be exiting: give them a moment.
  for _ in $(seq 20); do
    pgrep -x socat >/dev/null || pgrep -x haproxy >/dev/null || break
    sleep 0.1
  done
  rm -rf "$DIR"
}
FEEDERS=()
trap cleanup EXIT
in_ns() { ip netns exec "$NS" "$@"; }  # never background this function: $! would be a subshell
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

ip netns add "$NS"
in_ns ip link set lo up
# Safety: the demo's namespace is not the machine's own.
[ "$(stat -L -c %i "/run/netns/$NS")" != "$(stat -L -c %i /proc/self/ns/net)" ] || { echo "namespace check failed" >&2; exit 2; }

say "Two upstream servers that answer every line with their name"
for s in "s1 127.0.0.11 9001" "s2 127.0.0.12 9002"; do
  set -- $s
  ip netns exec "$NS" socat "TCP-LISTEN:$3,bind=$2,fork,reuseaddr" "SYSTEM:while read l; do echo $1; done" &
done

cat >"$DIR/haproxy.cfg" <<EOF
global
    stats socket $DIR/admin.sock level admin
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend fe
    bind 127.0.0.10:8000
    default_backend be
backend be
    balance roundrobin
    server s1 127.0.0.11:9001
    server s2 127.0.0.12:9002
EOF
say "HAProxy $(haproxy -v | head -1 | awk '{print $3}') in master-worker mode"
ip netns exec "$NS" haproxy -W -db -S "$DIR/master.sock" -f "$DIR/haproxy.cfg" >"$DIR/haproxy.log" 2>&1 &
HAPROXY=$!  # ip netns exec execs haproxy: this is the master's pid
for _ in $(seq 50); do [ -S "$DIR/admin.sock" ] && break; sleep 0.1; done
for _ in $(seq 50); do in_ns bash -c 'exec 3<>/dev/tcp/127.0.0.10/8000' 2>/dev/null && break; sleep 0.1; done
# The master answers its CLI once its signal handlers are set: only then is a reload (SIGUSR2) safe.
for _ in $(seq 100); do echo "show proc" | socat - "$DIR/master.sock" 2>/dev/null | grep -q worker && break; sleep 0.1; done

say "Four long-lived clients through HAProxy (each asks 'who' every 200 ms)"
for i in 1 2 3 4; do
  (while sleep 0.2; do echo who; done) | ip netns exec "$NS" socat - TCP:127.0.0.10:8000 >"$DIR/client$i.log" 2>&1 &
  FEEDERS+=($!)
  sleep 0.1
done
sleep 1
for i in 1 2 3 4; do echo "client $i talks to: $(tail -n1 "$DIR/client$i.log")"; done

say "sockkill list: HAProxy's connections to s1 (inside the namespace)"
"$SK" list --netns "$NS" --dst 127.0.0.11 --dport 9001 -p

say "Reload HAProxy with s1 removed from the config"
sed -i '/server s1 /d' "$DIR/haproxy.cfg"
OLD_WORKER=$(echo "show info" | socat - "$DIR/admin.sock" | awk '/^Pid:/{print $2}')
kill -USR2 "$HAPROXY"
for _ in $(seq 100); do
  NEW_WORKER=$(echo "show info" | socat - "$DIR/admin.sock" 2>/dev/null | awk '/^Pid:/{print $2}')
  [ -n "$NEW_WORKER" ] && [ "$NEW_WORKER" != "$OLD_WORKER" ] && break
  sleep 0.1
done
[ "$NEW_WORKER" != "$OLD_WORKER" ] || { echo "reload failed" >&2; exit 1; }
echo "old worker $OLD_WORKER still running, new worker $NEW_WORKER"
echo "show proc" | socat - "$DIR/master.sock"
sleep 1
for i in 1 2 3 4; do echo "client $i still talks to: $(tail -n1 "$DIR/client$i.log")"; done

say "The problem: s1 is gone from the config, yet traffic still flows to it (dry run = detector, exit 1)"
set +e
"$SK" haproxy --socket "$DIR/admin.sock" --addr 127.0.0.11:9001 --dry-run
echo "exit code: $?"
set -e

say "The fix: sockkill haproxy ends exactly the old worker's connections to s1, and verifies"
set +e
"$SK" haproxy --socket "$DIR/admin.sock" --addr 127.0.0.11:9001
RC=$?
set -e
echo "exit code: $RC"

say "After: s1's clients were cut off, s2's clients are still served"
sleep 1
S1_LEFT=$("$SK" list --netns "$NS" --dst 127.0.0.11 --dport 9001 --json | grep -c '"cookie"' || true)
echo "sockets to s1 left in the kernel: $S1_LEFT"
OK=1
for i in 1 2 3 4; do
  before=$(wc -l <"$DIR/client$i.log"); sleep 0.5; after=$(wc -l <"$DIR/client$i.log")
  last=$(grep -E '^s[12]$' "$DIR/client$i.log" | tail -n1)
  if [ "$after" -gt "$before" ]; then state="still served by $last"; else state="connection ended (was on $last)"; fi
  echo "client $i: $state"
  if [ "$last" = s2 ] && [ "$after" -le "$before" ]; then OK=0; fi
  if [ "$last" = s1 ] && [ "$after" -gt "$before" ]; then OK=0; fi
done
NEWC=$(in_ns bash -c 'exec 3<>/dev/tcp/127.0.0.10/8000; echo who >&3; read -t 2 l <&3; echo "$l"')
echo "a new client lands on: $NEWC"

if [ "$RC" -eq 0 ] && [ "$S1_LEFT" -eq 0 ] && [ "$OK" -eq 1 ] && [ "$NEWC" = s2 ]; then
  say "demo OK: lingering connections to the removed server ended, nothing else touched"
else
  say "demo FAILED"; cat "$DIR/haproxy.log"; exit 1
fi
