#!/usr/bin/env bash
# What an operator uses around the binary, checked for real (run as root; CI runs it):
#   1. the Debian package builds, holds every man page any page refers to, and installs;
#   2. the systemd detector units pass `systemd-analyze verify`;
#   3. the Prometheus alerting rules pass `promtool check rules` (Debian's prometheus package);
#   4. the README's Ansible playbook and ad-hoc command run (ansible-core from PyPI, in a
#      virtualenv this script creates) against a lab HAProxy in a throwaway namespace: the play
#      fails while sockets linger (dry run), reports `changed` when it destroyed some, and `ok`
#      when there is nothing left to do.
# The package is removed again at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh

say() { printf '\n== %s\n' "$*" >&2; }
fail() { echo "operator-check: $*" >&2; exit 1; }

say "Debian package"
deb=$(bash scripts/package.sh | tail -n1)
installed_before=$(dpkg-query -W -f='${Status}' sockkill 2>/dev/null || true)
work=$(mktemp -d /tmp/sockkill-operator.XXXXXX)
cleanup() {
  [ "$(type -t lab_down)" = function ] && lab_down
  if [ "$installed_before" != "install ok installed" ]; then dpkg -r sockkill >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
dpkg -i "$deb" >/dev/null
[ -x /usr/bin/sockkill ] || fail "the package did not install /usr/bin/sockkill"
man -w sockkill-kill >/dev/null 2>&1 || [ -f /usr/share/man/man1/sockkill-kill.1.gz ] || fail "man sockkill-kill: no page"

say "systemd units"
mkdir -p "$work/units"
cp /lib/systemd/system/sockkill-haproxy-check@.service /lib/systemd/system/sockkill-haproxy-check@.timer "$work/units/"
# An instance's env file, as the units' comments describe it.
mkdir -p /etc/sockkill/haproxy-check
created_env=0
if [ ! -e /etc/sockkill/haproxy-check/verify.env ]; then
  cp /usr/share/doc/sockkill/examples/haproxy-check.env.example /etc/sockkill/haproxy-check/verify.env
  created_env=1
fi
out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no \
  /lib/systemd/system/sockkill-haproxy-check@verify.service /lib/systemd/system/sockkill-haproxy-check@verify.timer 2>&1) \
  || { echo "$out" >&2; fail "systemd-analyze verify failed"; }
# Lines about our units are findings; others (the host's own units) are not ours to judge.
if grep -i "sockkill" <<<"$out" >&2; then fail "systemd-analyze verify complained about the sockkill units"; fi
[ "$created_env" = 1 ] && rm -f /etc/sockkill/haproxy-check/verify.env && rmdir --ignore-fail-on-non-empty /etc/sockkill/haproxy-check /etc/sockkill
# The lingering sweep, and haproxy.service with the drop-in that starts it after a reload.
[ -f /lib/systemd/system/haproxy.service ] || fail "no haproxy.service to verify the drop-in against"
dropin=/etc/systemd/system/haproxy.service.d/sockkill-sweep.conf
[ -e "$dropin" ] && fail "$dropin exists already: not touching it"
mkdir -p "$(dirname "$dropin")"
cp /usr/share/doc/sockkill/examples/haproxy.service.d/sockkill-sweep.conf "$dropin"
out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no \
  /lib/systemd/system/sockkill-haproxy-sweep.service /lib/systemd/system/haproxy.service 2>&1) || verify_rc=$?
rm -f "$dropin"; rmdir --ignore-fail-on-non-empty "$(dirname "$dropin")"
[ "${verify_rc:-0}" = 0 ] || { echo "$out" >&2; fail "systemd-analyze verify failed (sweep unit, haproxy drop-in)"; }
if grep -i "sockkill" <<<"$out" >&2; then fail "systemd-analyze verify complained about the sweep unit or drop-in"; fi

say "Prometheus rules"
if ! command -v promtool >/dev/null; then
  echo "operator-check: installing Debian's prometheus package for promtool" >&2
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  [ -e "$policy" ] || { printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  [ "$created_policy" = 1 ] && rm -f "$policy"
fi
promtool check rules contrib/prometheus/sockkill.rules.yml
promtool test rules contrib/prometheus/sockkill.rules.test.yml

say "Ansible (the README's playbook and ad-hoc command)"
# The README shows the playbook verbatim: what runs here is what it shows.
readme_play=$(awk 'p && /^```/{exit} p; /^```yaml$/{getline l; if (l == "# contrib/ansible/remove-backend.yml") {p=1; print l}}' README.md)
[ "$readme_play" = "$(cat contrib/ansible/remove-backend.yml)" ] || fail "README's playbook differs from contrib/ansible/remove-backend.yml"
readme_adhoc=$(grep -E '^ansible lbs -b -m command' README.md | head -n1)
[ -n "$readme_adhoc" ] || fail "no ad-hoc ansible command in README"

venv=${XDG_CACHE_HOME:-$HOME/.cache}/sockkill/ansible-venv
if [ ! -x "$venv/bin/ansible-playbook" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'ansible-core>=2.17,<2.19'
fi
export ANSIBLE_NOCOLOR=1 ANSIBLE_HOST_KEY_CHECKING=False ANSIBLE_LOCALHOST_WARNING=False ANSIBLE_INVENTORY_UNPARSED_WARNING=False
cat >"$work/inventory" <<EOF
[lbs]
localhost ansible_connection=local ansible_python_interpreter=$venv/bin/python ansible_become_method=su
EOF

# shellcheck source=scripts/lib/haproxy-lab.sh
source scripts/lib/haproxy-lab.sh
lab_up
lab_clients 4
sleep 1
lab_reload_without_s1 >/dev/null
sleep 1
audit="$work/sockkill.jsonl"
play() {
  "$venv/bin/ansible-playbook" -i "$work/inventory" contrib/ansible/remove-backend.yml \
    -e "sockkill_socket=$LAB_DIR/admin.sock" -e sockkill_addr=127.0.0.11:9001 "$@" >"$work/play.out" 2>&1
}
recap() { grep -E '^localhost +:' "$work/play.out" || { cat "$work/play.out" >&2; fail "no play recap"; }; }

# a) A dry run while the old worker's sessions linger: the play fails (not clean).
set +e; play -e sockkill_extra=--dry-run; rc=$?; set -e
r=$(recap); echo "dry run: rc=$rc $r" >&2
[ "$rc" -ne 0 ] && grep -q 'failed=1' <<<"$r" || fail "the dry-run play should fail while sockets linger"
# b) The real run: sockets destroyed -> changed.
play || { cat "$work/play.out" >&2; fail "the play failed"; }
r=$(recap); echo "run: $r" >&2
grep -q 'changed=1' <<<"$r" && grep -q 'failed=0' <<<"$r" || fail "the play should report changed"
left=$(sockkill list --netns "$LAB_NS" --dst 127.0.0.11 --dport 9001 --json | grep -c '"cookie"' || true)
[ "$left" -eq 0 ] || fail "$left sockets to s1 left after the play"
# c) Again: nothing to do -> ok, not changed.
play || { cat "$work/play.out" >&2; fail "the second play failed"; }
r=$(recap); echo "again: $r" >&2
grep -q 'changed=0' <<<"$r" && grep -q 'failed=0' <<<"$r" || fail "the second play should be ok, not changed"
# d) The ad-hoc command, with the lab's socket, address and a scratch audit log.
adhoc=${readme_adhoc//\/run\/haproxy\/admin.sock/$LAB_DIR/admin.sock}
adhoc=${adhoc//10.0.0.7:8080/127.0.0.11:9001}
adhoc=${adhoc//\/var\/log\/sockkill.jsonl/$audit}
adhoc=${adhoc/ansible lbs/$venv/bin/ansible lbs -i $work/inventory}
eval "$adhoc" >"$work/adhoc.out" 2>&1 || { cat "$work/adhoc.out" >&2; fail "the ad-hoc command failed"; }
grep -q '"clean": true' "$work/adhoc.out" || { cat "$work/adhoc.out" >&2; fail "the ad-hoc command's JSON does not say clean"; }
grep -q '"event":"start"' "$audit" || fail "no audit log from the ad-hoc command"
# e) The reload playbook: a configuration without s2 deployed, HAProxy reloaded (in the lab: SIGUSR2
#    to the master), and its handler ends exactly what the old worker keeps of s2.
#    First s1 comes back (a reload outside the play), and four new clients spread over s1 and s2.
lab_config s1 s2
old_worker=$(lab_worker); kill -USR2 "$LAB_MASTER"
for _ in $(seq 100); do w=$(lab_worker); [ -n "$w" ] && [ "$w" != "$old_worker" ] && break; sleep 0.1; done
first=$((LAB_NCLIENTS + 1))
lab_clients 4
sleep 1
grep -v 'server s2' "$LAB_DIR/haproxy.cfg" >"$work/haproxy-without-s2.cfg"
grep -q 'server s1' "$work/haproxy-without-s2.cfg" || fail "the lab's configuration has no s1"
s2_before=$(sockkill list --netns "$LAB_NS" --dst 127.0.0.12 --dport 9002 --json | grep -c '"cookie"' || true)
[ "$s2_before" -gt 0 ] || fail "no sessions to s2 before the reload"
"$venv/bin/ansible-playbook" -i "$work/inventory" contrib/ansible/reload-haproxy.yml \
  -e "haproxy_config_src=$work/haproxy-without-s2.cfg haproxy_config=$LAB_DIR/haproxy.cfg" \
  -e "haproxy_reload='kill -USR2 $LAB_MASTER' sockkill_socket=$LAB_DIR/admin.sock sockkill_audit_log=$audit" \
  >"$work/reload.out" 2>&1 || { cat "$work/reload.out" >&2; fail "the reload playbook failed"; }
grep -q 'after reload: end lingering connections' "$work/reload.out" || { cat "$work/reload.out" >&2; fail "the handler did not run"; }
r=$(grep -E '^localhost +:' "$work/reload.out"); echo "reload playbook: $r" >&2
grep -q 'failed=0' <<<"$r" || fail "the reload playbook should not fail"
left=$(sockkill list --netns "$LAB_NS" --dst 127.0.0.12 --dport 9002 --json | grep -c '"cookie"' || true)
[ "$left" -eq 0 ] || fail "$left sockets to s2 left after the reload playbook"
# The new clients that s1 served are still answered by s1, after the sweep too.
s1_clients=()
for i in $(seq "$first" "$LAB_NCLIENTS"); do grep -q '^s1$' "$LAB_DIR/client$i.log" && s1_clients+=("$i"); done
[ "${#s1_clients[@]}" -gt 0 ] || fail "no new client reached s1"
declare -A lines
for i in "${s1_clients[@]}"; do lines[$i]=$(wc -l <"$LAB_DIR/client$i.log"); done
sleep 1
for i in "${s1_clients[@]}"; do
  [ "$(wc -l <"$LAB_DIR/client$i.log")" -gt "${lines[$i]}" ] || fail "s1 client $i is not answered any more"
  [ "$(tail -n 1 "$LAB_DIR/client$i.log")" = s1 ] || fail "s1 client $i is answered by another server"
done
grep -q '"event":"destroyed"' "$audit" || fail "no destroyed event in the audit log from the sweep"
say "operator checks passed"
