#!/usr/bin/env bash
# Makes small seed inputs for the fuzz targets with qemu-img and hyperctl
# (corpus/ is not committed). Run from the fuzz/ directory.
set -euo pipefail
cd "$(dirname "$0")"
t=$(mktemp -d); trap 'rm -rf "$t"' EXIT
mkdir -p corpus/{qcow2,vmdk,vhd,vhdx,ova,ovf,manifest,vmdk_stream,ova_stream}
qemu-img create -q -f qcow2 -o cluster_size=4096 "$t/a.qcow2" 256K
qemu-io -f qcow2 -c "write -P 0x61 0 8k" -c "write -z 64k 4k" "$t/a.qcow2" >/dev/null
cp "$t/a.qcow2" corpus/qcow2/plain
cp "$t/a.qcow2" "$t/s.qcow2"
qemu-img snapshot -c s1 "$t/s.qcow2"
qemu-io -f qcow2 -c "write -P 0x63 4k 8k" "$t/s.qcow2" >/dev/null
cp "$t/s.qcow2" corpus/qcow2/snapshot
qemu-img convert -c -O qcow2 -o cluster_size=4096 "$t/a.qcow2" corpus/qcow2/compressed
qemu-img create -q -f raw "$t/a.raw" 256K
qemu-io -f raw -c "write -P 0x62 0 4k" "$t/a.raw" >/dev/null
qemu-img convert -O vmdk -o subformat=streamOptimized "$t/a.raw" corpus/vmdk/qemu-stream
qemu-img convert -O vmdk -o subformat=monolithicSparse "$t/a.raw" corpus/vmdk/sparse
cargo run -q --manifest-path ../Cargo.toml -p hypersdk-cli -- convert "$t/a.raw" corpus/vmdk/ours --to vmdk --overwrite >/dev/null
qemu-img convert -O vpc -o subformat=dynamic "$t/a.raw" corpus/vhd/dynamic
cargo run -q --manifest-path ../Cargo.toml -p hypersdk-cli -- convert "$t/a.raw" corpus/vhd/fixed --to vhd --overwrite >/dev/null
# vhdx: the 4 KiB slots fuzz_targets/vhdx.rs places (header, region table,
# log, BAT, metadata table and items, data), cut from a qemu-written file.
qemu-img convert -O vhdx -o subformat=dynamic,block_size=1M "$t/a.raw" "$t/a.vhdx"
for k in 64 192 1024 2048 3072 3136 4096 4100; do
  dd if="$t/a.vhdx" bs=1K skip=$k count=4 status=none
done > corpus/vhdx/dynamic
printf '<domain><name>s</name><memory>1</memory><devices><disk type="file" device="disk"><source file="a.raw"/><target dev="vda"/></disk></devices></domain>' > "$t/s.xml"
cargo run -q --manifest-path ../Cargo.toml -p hypersdk-cli -- export "$t/s.xml" --output "$t/out" >/dev/null
cp "$t/out/s.ova" corpus/ova/seed
cp "$t/out/s.ova" corpus/ova_stream/seed
cp corpus/vmdk/ours corpus/vmdk_stream/ours
cp corpus/vmdk/qemu-stream corpus/vmdk_stream/qemu-stream
tar -xf "$t/out/s.ova" -C "$t/out"
cp "$t/out/s.ovf" corpus/ovf/seed
cp "$t/out/s.mf" corpus/manifest/seed
ls -l corpus/*
