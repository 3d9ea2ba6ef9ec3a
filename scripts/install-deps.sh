#!/usr/bin/env bash
# Installs what sockkill's tests, demo and benchmark use, on Debian, as root.
# Idempotent: does nothing when everything is already there.
set -euo pipefail

need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v socat >/dev/null || need+=(socat)
command -v ss >/dev/null || need+=(iproute2)
command -v ip >/dev/null || need+=(iproute2)
command -v setpriv >/dev/null || need+=(util-linux)
command -v unshare >/dev/null || need+=(util-linux)
command -v cc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)  # scripts/haproxy-build.sh
command -v nsenter >/dev/null || need+=(util-linux)
[ -x /usr/bin/time ] || need+=(time)  # the benchmark's peak-RSS measurement

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing ${need[*]} and not root; install them first" >&2
  exit 1
fi
echo "install-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Keep the haproxy package from starting its own service during the install.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
