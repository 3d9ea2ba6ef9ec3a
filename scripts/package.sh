#!/usr/bin/env bash
# Builds the Debian package: binary, man page, shell completions, README, licenses.
#   bash scripts/package.sh      -> target/debian/sockkill_<version>_<arch>.deb
# Installs cargo-deb from crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
cargo build --release --quiet
mkdir -p target/assets
./target/release/sockkill man >target/assets/sockkill.1
./target/release/sockkill completions bash >target/assets/sockkill.bash
./target/release/sockkill completions zsh >target/assets/_sockkill
./target/release/sockkill completions fish >target/assets/sockkill.fish
cargo deb --no-build --quiet
deb=$(ls -t target/debian/sockkill_*.deb | head -n1)
# The package holds what it promises.
contents=$(dpkg-deb -c "$deb")
for f in usr/bin/sockkill usr/share/man/man1/sockkill.1 usr/share/bash-completion/completions/sockkill \
         usr/share/zsh/vendor-completions/_sockkill usr/share/fish/vendor_completions.d/sockkill.fish \
         usr/share/doc/sockkill/README.md; do
  grep -q "$f" <<<"$contents" || { echo "package lacks $f" >&2; exit 1; }
done
echo "$deb"
