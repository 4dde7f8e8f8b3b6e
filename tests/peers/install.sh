#!/usr/bin/env bash
# Installs the real peers the test suite talks to, idempotently and without
# prompting: qemu-img and qemu-io (Debian package qemu-utils), the
# zstd and gzip command-line tools (to read what our compression writes), and
# the govmomi vCenter simulator launcher (tests/peers/vcsim, built with Go).
set -euo pipefail

need_apt=()
command -v qemu-img >/dev/null 2>&1 && command -v qemu-io >/dev/null 2>&1 || need_apt+=(qemu-utils)
command -v zstd >/dev/null 2>&1 || need_apt+=(zstd)
command -v go >/dev/null 2>&1 || need_apt+=(golang-go)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v gzip >/dev/null 2>&1 || need_apt+=(gzip)

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
(cd "$root/tests/peers/vcsim" && GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" go build -o "$root/target/peers/vcsim-launcher" .)
echo "vcsim launcher: $root/target/peers/vcsim-launcher" >&2
