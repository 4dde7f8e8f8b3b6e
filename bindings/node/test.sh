#!/usr/bin/env bash
# Builds the Node addon with napi-rs (generating native.js and its TypeScript
# types), runs the README's example, then the node:test suite (test/) against
# real peers: the example VM, the vCenter simulator, qemu-img. Needs
# tests/peers/install.sh first. Prints "N passed, N failed in Ts".
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd ../.. && pwd)"
if [ ! -x node_modules/.bin/napi ] || ! cmp -s package-lock.json node_modules/.package-lock.json; then
  npm ci --no-audit --no-fund --loglevel=error >&2
fi
node_modules/.bin/napi build --platform --js native.js --dts native.d.ts >&2
grep -q "startExport(vm: string, output: string, settingsJson: string): Export" native.d.ts

# The packed package installs into an empty project (offline: it has no
# dependencies) and the README's example runs there.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tarball=$(npm pack --silent --pack-destination "$work")
mkdir -p "$work/app/examples"
cp -r "$root/examples/vms" "$work/app/examples/vms"
cp examples/quickstart.js "$work/app/"
(cd "$work/app" && npm init -y >/dev/null && npm install --offline --no-audit --no-fund --loglevel=error "$work/$tarball" >&2 && node quickstart.js)
test -s "$work/app/out-js/demo-vm.ova"
echo "npm install of the packed package works; the README example exports demo-vm" >&2

start=$(date +%s)
set +e
node --test --test-reporter=tap test/ | tee "$work/log"
status=${PIPESTATUS[0]}
set -e
pass=$(awk '/^# pass/ { print $3 }' "$work/log")
fail=$(awk '/^# fail/ { print $3 }' "$work/log")
echo "${pass:-0} passed, ${fail:-0} failed in $(( $(date +%s) - start ))s"
exit "$status"
