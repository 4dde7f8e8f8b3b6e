#!/usr/bin/env bash
# Installs the real peers the test suite talks to, idempotently and without
# prompting: qemu-img and qemu-io (Debian package qemu-utils), the
# zstd and gzip command-line tools (to read what our compression writes),
# openssl (to make signing keys and check signatures), OpenSSH's server
# (the Proxmox peer's node, reading disks over SFTP),
# the govmomi vCenter simulator launcher (tests/peers/vcsim, built with Go),
# a Python virtual environment (target/peers/venv) with the packages of
# tests/peers/requirements.txt, Node.js with npm (the Node binding's
# build tool, @napi-rs/cli, comes from npm in bindings/node/test.sh), and a
# JDK with Maven (Kotlin, JNA and JUnit for the uniffi binding's tests come
# from Maven Central in bindings/uniffi/test.sh).
set -euo pipefail

need_apt=()
command -v qemu-img >/dev/null 2>&1 && command -v qemu-io >/dev/null 2>&1 || need_apt+=(qemu-utils)
command -v zstd >/dev/null 2>&1 || need_apt+=(zstd)
# nbdinfo: the oracle for qcow2 dirty bitmaps (qemu-nbd -B + --map=qemu:dirty-bitmap:NAME).
command -v nbdinfo >/dev/null 2>&1 || need_apt+=(libnbd-bin)
command -v go >/dev/null 2>&1 || need_apt+=(golang-go)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v gzip >/dev/null 2>&1 || need_apt+=(gzip)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# OpenSSH's server: the Proxmox peer's node, serving disk files over SFTP.
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
# The Hyper-V peer's file server (tests/support/src/hyperv.rs): smbd and smbpasswd.
[ -x /usr/sbin/smbd ] && command -v smbpasswd >/dev/null 2>&1 || need_apt+=(samba)
# promtool checks and unit-tests deploy/prometheus's alert rules.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# Chromium, driven headless by playwright-core in the dashboard's browser tests.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# PostgreSQL: the daemon's shared job store in its tests (a private cluster each).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v mvn >/dev/null 2>&1 && command -v java >/dev/null 2>&1 || need_apt+=(maven default-jdk-headless)
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
command -v python3 >/dev/null 2>&1 && python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3 python3-venv)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing test peers: ${need_apt[*]}" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to install ${need_apt[*]}" >&2; exit 1; }
    sudo="sudo -n"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
qemu-img --version | head -n1 >&2

# The vCenter simulator launcher (govmomi from the Go module proxy; a Go
# older than its go.mod wants fetches the right toolchain the same way).
root="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p "$root/target/peers"
# With it, from the same module: govc (govmomi's command packages) to import
# exported packages into the simulator, and ovfspec (govmomi's OVF reader).
(
  cd "$root/tests/peers/vcsim"
  export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
  go build -o "$root/target/peers/vcsim-launcher" .
  go build -o "$root/target/peers/govc" ./govc
  go build -o "$root/target/peers/ovfspec" ./ovfspec
)
echo "vcsim launcher, govc, ovfspec: $root/target/peers/" >&2

# Python packages, in a virtual environment of our own; reinstalled only when
# requirements.txt changes.
venv="$root/target/peers/venv"
req="$root/tests/peers/requirements.txt"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! cmp -s "$req" "$venv/.installed-requirements"; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$venv/.installed-requirements"
fi
echo "python peers: $venv" >&2

# npm_peer NAME VERSION FILE: npm package NAME@VERSION installed once per
# version outside the checkout (reused by clones); FILE, relative to its
# directory, shows that it is there.
npm_peer() {
  local dir="${HYPERSDK_PEERS_CACHE:-$HOME/.cache/hypersdk/peers}/$1-$2"
  if [ ! -e "$dir/$3" ]; then
    mkdir -p "$dir"
    (cd "$dir" && npm install --no-audit --no-fund --silent "$1@$2" >/dev/null)
  fi
  echo "$1: $dir" >&2
}

# Azurite, Microsoft's Azure Storage emulator, for the Azure Blob sink.
npm_peer azurite 3.35.0 node_modules/.bin/azurite-blob

# Playwright (its core only: no browser download) drives Debian's Chromium
# in the dashboard's browser tests (hypersdk-daemon/tests/ui.rs).
npm_peer playwright-core 1.64.1 node_modules/playwright-core/package.json

# MinIO, the more faithful S3 (Go module github.com/minio/minio, no binary
# in a registry): built once per version outside the checkout (about 5
# minutes on 2 cores), reused by clones.
minio_version=v0.0.0-20260212201848-7aac2a2c5b7c
minio_dir="${HYPERSDK_PEERS_CACHE:-$HOME/.cache/hypersdk/peers}/minio-$minio_version"
if [ ! -x "$minio_dir/minio" ]; then
  mkdir -p "$minio_dir"
  echo "building MinIO $minio_version (once)" >&2
  (cd /tmp && GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" GOBIN="$minio_dir" go install "github.com/minio/minio@$minio_version")
fi
echo "minio: $minio_dir" >&2

# The KubeVirt provider's peers: kube-apiserver and virt-exportserver (with
# KubeVirt's CRDs), built once per version outside the checkout (about 10
# minutes together on 2 cores the first time), reused by clones.
bash "$root/tests/peers/build_kube_peers.sh"
