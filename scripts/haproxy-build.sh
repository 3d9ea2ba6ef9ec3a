#!/usr/bin/env bash
# Builds upstream HAProxy releases for the version matrix into a cache outside
# the clone, each only when missing, and prints "VERSION PATH" per binary.
#
#   bash scripts/haproxy-build.sh [VERSION ...]     (default: every tarball found)
#
# Sources: $HAPROXY_SOURCES (default ../shared/haproxy from the project root),
# holding haproxy-X.Y.Z.tar.gz and SHA256SUMS. Cache: $HAPROXY_CACHE (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/sockkill/haproxy). TCP mode only: no OpenSSL,
# Lua, PCRE or zlib.
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCES=${HAPROXY_SOURCES:-../shared/haproxy}
CACHE=${HAPROXY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sockkill/haproxy}

if [ ! -d "$SOURCES" ] || ! ls "$SOURCES"/haproxy-*.tar.gz >/dev/null 2>&1; then
  echo "haproxy-build: no HAProxy sources in $SOURCES (set HAPROXY_SOURCES to a folder of haproxy-X.Y.Z.tar.gz)" >&2
  exit 1
fi
SOURCES=$(cd "$SOURCES" && pwd)
if [ $# -gt 0 ]; then
  versions=("$@")
else
  versions=()
  for t in "$SOURCES"/haproxy-*.tar.gz; do
    v=${t##*/haproxy-}
    versions+=("${v%.tar.gz}")
  done
fi
command -v make >/dev/null && command -v cc >/dev/null || {
  echo "haproxy-build: needs make and a C compiler (scripts/install-deps.sh installs them)" >&2
  exit 1
}
mkdir -p "$CACHE"
for v in "${versions[@]}"; do
  bin="$CACHE/$v/haproxy"
  if [ ! -x "$bin" ]; then
    tarball="$SOURCES/haproxy-$v.tar.gz"
    [ -f "$tarball" ] || { echo "haproxy-build: $tarball is missing" >&2; exit 1; }
    if [ -f "$SOURCES/SHA256SUMS" ]; then
      (cd "$SOURCES" && grep " haproxy-$v.tar.gz\$" SHA256SUMS | sha256sum -c --quiet -) || {
        echo "haproxy-build: checksum mismatch for $tarball" >&2
        exit 1
      }
    fi
    work=$(mktemp -d "$CACHE/build-$v.XXXXXX")
    echo "haproxy-build: building HAProxy $v (about 40 s)" >&2
    tar xzf "$tarball" -C "$work"
    src=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n1)
    if ! make -C "$src" -j"$(nproc)" TARGET=linux-glibc USE_LIBCRYPT= USE_OPENSSL= USE_LUA= USE_PCRE= USE_ZLIB= \
        >"$work/build.log" 2>&1; then
      tail -n 30 "$work/build.log" >&2
      echo "haproxy-build: building $v failed" >&2
      exit 1
    fi
    mkdir -p "$CACHE/$v"
    cp "$src/haproxy" "$bin.tmp" && mv "$bin.tmp" "$bin"
    rm -rf "$work"
  fi
  echo "$v $bin"
done
