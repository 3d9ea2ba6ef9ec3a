# shellcheck shell=bash
# A throwaway HAProxy lab in a network namespace of its own, shared by
# scripts/demo.sh and scripts/operator-check.sh (source it; run as root):
#
#   clients -> HAProxy (master-worker) 127.0.0.10:8000 -> s1 127.0.0.11:9001, s2 127.0.0.12:9002
#
# Every process it starts lives in the lab's namespace (or is a feeder it
# records) and is ended by pid in lab_down; the namespace is deleted there.

LAB_NS="sockkill-lab-$$"
LAB_DIR=""
LAB_FEEDERS=()
LAB_MASTER=""
HAPROXY_BIN=${HAPROXY_BIN:-haproxy}

lab_ns() { ip netns exec "$LAB_NS" "$@"; }  # never background this function: $! would be a subshell

# The stats socket, the master CLI and the log live in LAB_DIR.
lab_up() {
  LAB_DIR="$(mktemp -d /tmp/sockkill-lab.XXXXXX)"
  ip netns add "$LAB_NS"
  lab_ns ip link set lo up
  # Safety: the lab's namespace is not the machine's own.
  [ "$(stat -L -c %i "/run/netns/$LAB_NS")" != "$(stat -L -c %i /proc/self/ns/net)" ] || {
    echo "lab: namespace check failed" >&2
    return 2
  }
  for s in "s1 127.0.0.11 9001" "s2 127.0.0.12 9002"; do
    # shellcheck disable=SC2086
    set -- $s
    ip netns exec "$LAB_NS" socat "TCP-LISTEN:$3,bind=$2,fork,reuseaddr" "SYSTEM:while read l; do echo $1; done" &
  done
  lab_config s1 s2
  ip netns exec "$LAB_NS" "$HAPROXY_BIN" -W -db -S "$LAB_DIR/master.sock" -f "$LAB_DIR/haproxy.cfg" >"$LAB_DIR/haproxy.log" 2>&1 &
  LAB_MASTER=$!  # ip netns exec execs haproxy: this is the master's pid
  for _ in $(seq 50); do [ -S "$LAB_DIR/admin.sock" ] && break; sleep 0.1; done
  for _ in $(seq 50); do lab_ns bash -c 'exec 3<>/dev/tcp/127.0.0.10/8000' 2>/dev/null && break; sleep 0.1; done
  # The master answers its CLI once its signal handlers are set: only then is a reload (SIGUSR2) safe.
  for _ in $(seq 100); do
    echo "show proc" | socat - "$LAB_DIR/master.sock" 2>/dev/null | grep -q worker && return 0
    sleep 0.1
  done
  echo "lab: HAProxy did not come up" >&2
  cat "$LAB_DIR/haproxy.log" >&2
  return 1
}

# Writes the configuration with the named servers (s1, s2).
lab_config() {
  {
    printf 'global\n    stats socket %s/admin.sock level admin\n' "$LAB_DIR"
    printf 'defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n'
    printf 'frontend fe\n    bind 127.0.0.10:8000\n    default_backend be\n'
    printf 'backend be\n    balance roundrobin\n'
    for s in "$@"; do
      case $s in
        s1) echo "    server s1 127.0.0.11:9001" ;;
        s2) echo "    server s2 127.0.0.12:9002" ;;
      esac
    done
  } >"$LAB_DIR/haproxy.cfg"
}

# N more long-lived clients, each asking "who" every 200 ms; client i (numbered on
# from earlier calls) logs to LAB_DIR/clientI.log.
LAB_NCLIENTS=0
lab_clients() {
  local n=$1 i
  for i in $(seq $((LAB_NCLIENTS + 1)) $((LAB_NCLIENTS + n))); do
    LAB_NCLIENTS=$i
    (while sleep 0.2; do echo who; done) | ip netns exec "$LAB_NS" socat - TCP:127.0.0.10:8000 >"$LAB_DIR/client$i.log" 2>&1 &
    LAB_FEEDERS+=($!)
    sleep 0.1
  done
}

lab_worker() { echo "show info" | socat - "$LAB_DIR/admin.sock" 2>/dev/null | awk '/^Pid:/{print $2}'; }

# Reloads HAProxy without s1 and waits for the new worker; the old one keeps its sessions.
lab_reload_without_s1() {
  local old new
  lab_config s2
  old=$(lab_worker)
  kill -USR2 "$LAB_MASTER"
  for _ in $(seq 100); do
    new=$(lab_worker)
    if [ -n "$new" ] && [ "$new" != "$old" ]; then
      echo "$old $new"
      return 0
    fi
    sleep 0.1
  done
  echo "lab: reload failed" >&2
  return 1
}

lab_down() {
  # Every process in the lab's namespace is one this lab started: end them by pid.
  if ip netns list | grep -qw "$LAB_NS"; then
    local left i
    for i in $(seq 30); do
      left=$(ip netns pids "$LAB_NS")
      [ -z "$left" ] && break
      # shellcheck disable=SC2086
      if [ "$i" -lt 20 ]; then kill $left 2>/dev/null || true; else kill -9 $left 2>/dev/null || true; fi
      sleep 0.1
    done
    ip netns del "$LAB_NS" 2>/dev/null || true
  fi
  # The client feeders run in the root namespace (their socat is in the lab's).
  local p
  for p in "${LAB_FEEDERS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "$LAB_DIR" ] && rm -rf "$LAB_DIR"
}
