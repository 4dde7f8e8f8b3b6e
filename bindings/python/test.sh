#!/usr/bin/env bash
# Builds the Python binding into a wheel (maturin, abi3), installs it into a
# fresh virtual environment with nothing else and runs the README's example
# there, then runs the pytest suite (tests/) against real peers: the example
# VM, the vCenter simulator, qemu-img. Needs tests/peers/install.sh first.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/target/peers/venv"
wheels="$root/target/wheels"
rm -f "$wheels"/hypersdk-*.whl
(cd "$root/bindings/python" && "$venv/bin/maturin" build --quiet --out "$wheels" >&2)
wheel=$(ls "$wheels"/hypersdk-*.whl)
echo "wheel: $wheel" >&2

# pip install of the wheel in a fresh venv, offline: it needs nothing else.
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
python3 -m venv "$fresh/venv"
"$fresh/venv/bin/python" -m pip install --quiet --no-index --disable-pip-version-check "$wheel"
work="$fresh/work"
mkdir -p "$work/examples"
cp -r "$root/examples/vms" "$work/examples/vms"
(cd "$work" && "$fresh/venv/bin/python" "$root/bindings/python/examples/quickstart.py")
test -s "$work/out-py/demo-vm.ova"
echo "fresh venv: the wheel installs and the README example exports demo-vm" >&2

"$venv/bin/python" -m pip install --quiet --no-deps --force-reinstall --disable-pip-version-check "$wheel"
cd "$root/bindings/python"
"$venv/bin/python" -m pytest -q -p no:cacheprovider
