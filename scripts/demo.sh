#!/usr/bin/env bash
# sockkill demo: the HAProxy problem and its fix, in a throwaway network namespace.
#
#   clients -> HAProxy 2.6 (master-worker) -> s1 127.0.0.11:9001, s2 127.0.0.12:9002
#
# A reload removes s1; the old worker keeps its connections to s1 alive (HAProxy
# keeps an old worker's sessions until hard-stop-after, on every branch up to
# 3.2). `sockkill haproxy` finds exactly those — through HAProxy's own stream
# table — destroys them, and verifies. Everything runs inside a namespace this
# script creates and deletes; the machine's own sockets are never touched. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --release --quiet
SK="$PWD/target/release/sockkill"
# shellcheck source=scripts/lib/haproxy-lab.sh
source scripts/lib/haproxy-lab.sh
trap lab_down EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Two upstream servers that answer every line with their name, HAProxy $(haproxy -v | head -1 | awk '{print $3}') in master-worker mode"
lab_up

say "Four long-lived clients through HAProxy (each asks 'who' every 200 ms)"
lab_clients 4
sleep 1
for i in 1 2 3 4; do echo "client $i talks to: $(tail -n1 "$LAB_DIR/client$i.log")"; done

say "sockkill list: HAProxy's connections to s1 (inside the namespace)"
"$SK" list --netns "$LAB_NS" --dst 127.0.0.11 --dport 9001 -p

say "Reload HAProxy with s1 removed from the config"
read -r OLD_WORKER NEW_WORKER < <(lab_reload_without_s1)
echo "old worker $OLD_WORKER still running, new worker $NEW_WORKER"
echo "show proc" | socat - "$LAB_DIR/master.sock"
sleep 1
for i in 1 2 3 4; do echo "client $i still talks to: $(tail -n1 "$LAB_DIR/client$i.log")"; done

say "The problem: s1 is gone from the config, yet traffic still flows to it (dry run = detector, exit 1)"
set +e
"$SK" haproxy --socket "$LAB_DIR/admin.sock" --addr 127.0.0.11:9001 --dry-run
echo "exit code: $?"
set -e

say "The fix: sockkill haproxy ends exactly the old worker's connections to s1, and verifies"
set +e
"$SK" haproxy --socket "$LAB_DIR/admin.sock" --addr 127.0.0.11:9001
RC=$?
set -e
echo "exit code: $RC"

say "After: s1's clients were cut off, s2's clients are still served"
sleep 1
S1_LEFT=$("$SK" list --netns "$LAB_NS" --dst 127.0.0.11 --dport 9001 --json | grep -c '"cookie"' || true)
echo "sockets to s1 left in the kernel: $S1_LEFT"
OK=1
for i in 1 2 3 4; do
  before=$(wc -l <"$LAB_DIR/client$i.log"); sleep 0.5; after=$(wc -l <"$LAB_DIR/client$i.log")
  last=$(grep -E '^s[12]$' "$LAB_DIR/client$i.log" | tail -n1)
  if [ "$after" -gt "$before" ]; then state="still served by $last"; else state="connection ended (was on $last)"; fi
  echo "client $i: $state"
  if [ "$last" = s2 ] && [ "$after" -le "$before" ]; then OK=0; fi
  if [ "$last" = s1 ] && [ "$after" -gt "$before" ]; then OK=0; fi
done
NEWC=$(lab_ns bash -c 'exec 3<>/dev/tcp/127.0.0.10/8000; echo who >&3; read -t 2 l <&3; echo "$l"')
echo "a new client lands on: $NEWC"

if [ "$RC" -eq 0 ] && [ "$S1_LEFT" -eq 0 ] && [ "$OK" -eq 1 ] && [ "$NEWC" = s2 ]; then
  say "demo OK: lingering connections to the removed server ended, nothing else touched"
else
  say "demo FAILED"; cat "$LAB_DIR/haproxy.log"; exit 1
fi
