#!/usr/bin/env bash
# Runs the hypersdk_export Ansible module with ansible-playbook on localhost
# (tests/playbook.yml), on the Python binding installed in target/peers/venv
# by bindings/python/test.sh. Prints "N passed, N failed in Ts" like pytest.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/target/peers/venv"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf 'ansible test passphrase\n' > "$work/pass.txt"
start=$(date +%s)
# The module's documentation parses in Ansible's own format.
ANSIBLE_LIBRARY="$root/bindings/ansible/library" "$venv/bin/ansible-doc" --json -t module hypersdk_export > "$work/doc"
grep -q '"short_description": "Export a VM into a verified OVA/OVF package with hypersdk"' "$work/doc"
set +e
ANSIBLE_LIBRARY="$root/bindings/ansible/library" ANSIBLE_NOCOLOR=1 \
ANSIBLE_LOCALHOST_WARNING=false ANSIBLE_INVENTORY_UNPARSED_WARNING=false \
"$venv/bin/ansible-playbook" -i localhost, -c local \
  -e "ansible_python_interpreter=$venv/bin/python" -e "repo=$root" -e "workdir=$work" \
  "$root/bindings/ansible/tests/playbook.yml" | tee "$work/log"
status=${PIPESTATUS[0]}
set -e
took=$(( $(date +%s) - start ))
ok=$(awk '/^localhost/ { for (i = 1; i <= NF; i++) if ($i ~ /^ok=/) { sub("ok=", "", $i); print $i } }' "$work/log")
failed=$(awk '/^localhost/ { for (i = 1; i <= NF; i++) if ($i ~ /^failed=/) { sub("failed=", "", $i); print $i } }' "$work/log")
# Each task that ran is one check; a failed playbook counts as one failure.
[ "$status" -ne 0 ] && [ "${failed:-0}" -eq 0 ] && failed=1
echo "${ok:-0} passed, ${failed:-0} failed in ${took}s"
exit "$status"
