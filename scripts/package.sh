#!/usr/bin/env bash
# Builds the Debian package: binary, one man page per command, shell completions,
# the systemd detector units (disabled), examples (env file, Prometheus rules,
# Ansible playbook), README, JSON schema, licenses.
#   bash scripts/package.sh      -> prints target/debian/sockkill_<version>_<arch>.deb
# Installs cargo-deb from crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
cargo build --release --quiet
rm -rf target/assets
mkdir -p target/assets/man
./target/release/sockkill man --out target/assets/man >/dev/null
./target/release/sockkill completions bash >target/assets/sockkill.bash
./target/release/sockkill completions zsh >target/assets/_sockkill
./target/release/sockkill completions fish >target/assets/sockkill.fish
cargo deb --no-build --quiet >&2
deb=$(ls -t target/debian/sockkill_*.deb | head -n1)
# The package holds what it promises.
contents=$(dpkg-deb -c "$deb")
has() { grep -qE " \./$1(\.gz)?\$" <<<"$contents"; }
for f in usr/bin/sockkill usr/share/bash-completion/completions/sockkill \
         usr/share/zsh/vendor-completions/_sockkill usr/share/fish/vendor_completions.d/sockkill.fish \
         usr/share/doc/sockkill/README.md usr/share/doc/sockkill/sockkill.schema.json \
         lib/systemd/system/sockkill-haproxy-check@.service lib/systemd/system/sockkill-haproxy-check@.timer \
         usr/share/doc/sockkill/examples/sockkill.rules.yml usr/share/doc/sockkill/examples/remove-backend.yml \
         usr/share/doc/sockkill/examples/haproxy-check.env.example \
         lib/systemd/system/sockkill-haproxy-sweep.service usr/share/doc/sockkill/examples/haproxy-sweep.env.example \
         usr/share/doc/sockkill/examples/haproxy.service.d/sockkill-sweep.conf \
         usr/share/doc/sockkill/examples/reload-haproxy.yml; do
  has "$f" || { echo "package lacks $f" >&2; exit 1; }
done
# Every page any page refers to (sockkill-NAME(1), SEE ALSO and SUBCOMMANDS) is in the package.
for page in target/assets/man/*.1; do
  has "usr/share/man/man1/$(basename "$page")" || { echo "package lacks $(basename "$page")" >&2; exit 1; }
  for ref in $(grep -oE 'sockkill\\-[a-z]+(\\fR)?\(1\)' "$page" | sed -E 's/\\-/-/; s/\\fR//; s/\(1\)//' | sort -u); do
    has "usr/share/man/man1/$ref.1" || { echo "$(basename "$page") refers to $ref(1), which the package lacks" >&2; exit 1; }
  done
done
echo "$deb"
