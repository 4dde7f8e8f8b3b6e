#!/usr/bin/env bash
# Rebuilds the bundled example VM's disks (committed, so the quick start needs
# no qemu tools). Deterministic content: a boot-like pattern, 1 MiB of seeded
# pseudo-random bytes, 1 MiB of text, a tail pattern; the rest unallocated.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p disks
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp" <<'PY'
import random, sys
d = sys.argv[1]
r = random.Random(20261124)
open(f"{d}/random.bin", "wb").write(bytes(r.getrandbits(8) for _ in range(1 << 20)))
line = b"hypersdk demo disk: every byte of this text must arrive intact.\n"
open(f"{d}/text.bin", "wb").write((line * ((1 << 20) // len(line) + 1))[: 1 << 20])
PY
rm -f disks/demo-root.qcow2 disks/demo-data.raw
qemu-img create -q -f qcow2 -o cluster_size=65536 disks/demo-root.qcow2 64M
qemu-io -f qcow2 \
  -c "write -P 0x55 0 1M" \
  -c "write -s $tmp/random.bin 8M 1M" \
  -c "write -s $tmp/text.bin 20M 1M" \
  -c "write -P 0xab 63M 512k" \
  disks/demo-root.qcow2 >/dev/null
qemu-img create -q -f raw disks/demo-data.raw 4M
qemu-io -f raw -c "write -s $tmp/text.bin 1M 1M" disks/demo-data.raw >/dev/null
qemu-img check -q disks/demo-root.qcow2
ls -l disks
