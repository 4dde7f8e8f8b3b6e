#!/usr/bin/env bash
# Builds the KubeVirt provider's heavy peers once per version, outside the
# checkout (so clean clones reuse them), from the Go module proxy:
#   kube-apiserver  k8s.io/kubernetes v$KUBE_VERSION  (about 12 minutes on 2 cores)
#   virt-exportserver kubevirt.io/kubevirt v$KUBEVIRT_VERSION (about 4 minutes),
#                   with KubeVirt's CRDs as its operator generates them (crds.json)
# Each is a wrapper module: the upstream go.mod's replace directives are
# copied (a dependency's replaces are ignored by Go), with every
# `./staging/…` one pointed at the published module of the same release.
# Idempotent: an existing binary is kept. Prints where they are.
set -euo pipefail

KUBE_VERSION=1.37.2
KUBEVIRT_VERSION=1.7.0
cache="${HYPERSDK_PEERS_CACHE:-$HOME/.cache/hypersdk/peers}"
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" GOFLAGS="${GOFLAGS:-} -mod=mod"

# wrapper DIR MODULE VERSION STAGING_VERSION PACKAGE: a module in DIR that
# requires MODULE@VERSION with its replaces, staging ones at
# STAGING_VERSION, and imports PACKAGE so that `go mod tidy` keeps it.
wrapper() {
  local dir=$1 module=$2 version=$3 staging=$4 package=$5
  rm -rf "$dir" && mkdir -p "$dir"
  local gomod
  gomod=$(cd "$dir" && go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module hypersdk.test/peerbuild"
    echo
    echo "go 1.26"
    echo
    echo "require $module $version"
    echo
    # The replace block(s) of the upstream go.mod, staging ones rewritten.
    python3 - "$gomod" "$staging" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
staging = sys.argv[2]
lines = []
for block in re.findall(r"^replace \((.*?)^\)", text, re.S | re.M):
    lines += [l.strip() for l in block.splitlines() if l.strip() and not l.strip().startswith("//")]
lines += [l[len("replace "):].strip() for l in text.splitlines() if l.startswith("replace ") and "(" not in l]
print("replace (")
for l in lines:
    left, right = [p.strip() for p in l.split("=>")]
    if right.startswith("./staging/"):
        right = left.split()[0] + " " + staging
    print("\t" + left + " => " + right)
print(")")
EOF
  } > "$dir/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$package" > "$dir/tools.go"
  (cd "$dir" && go mod tidy >/dev/null 2>&1 || go mod tidy)
}

kas_dir="$cache/kube-apiserver-v$KUBE_VERSION"
if [ ! -x "$kas_dir/kube-apiserver" ]; then
  echo "building kube-apiserver v$KUBE_VERSION (once, about 12 minutes)" >&2
  work=$(mktemp -d)
  wrapper "$work" k8s.io/kubernetes "v$KUBE_VERSION" "v0.${KUBE_VERSION#1.}" k8s.io/kubernetes/cmd/kube-apiserver
  mkdir -p "$kas_dir"
  (cd "$work" && go build -trimpath -ldflags=-s -o "$kas_dir/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
  mv "$kas_dir/kube-apiserver.tmp" "$kas_dir/kube-apiserver"
  rm -rf "$work"
fi
echo "kube-apiserver: $kas_dir" >&2

kv_dir="$cache/kubevirt-v$KUBEVIRT_VERSION"
if [ ! -x "$kv_dir/virt-exportserver" ] || [ ! -s "$kv_dir/crds.json" ]; then
  echo "building virt-exportserver v$KUBEVIRT_VERSION (once, about 4 minutes)" >&2
  work=$(mktemp -d)
  wrapper "$work" kubevirt.io/kubevirt "v$KUBEVIRT_VERSION" "v$KUBEVIRT_VERSION" kubevirt.io/kubevirt/cmd/virt-exportserver
  mkdir -p "$kv_dir"
  (cd "$work" && go build -trimpath -ldflags=-s -o "$kv_dir/virt-exportserver.tmp" kubevirt.io/kubevirt/cmd/virt-exportserver)
  # KubeVirt's CRDs (VirtualMachine, VirtualMachineInstance,
  # VirtualMachineExport, VirtualMachineSnapshot, VirtualMachineSnapshotContent)
  # as KubeVirt's operator generates them, written as JSON by a small
  # program against the module's generator.
  mkdir -p "$work/crdgen"
  cat > "$work/crdgen/main.go" <<'GO'
package main

import (
	"encoding/json"
	"os"

	extv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/components"
)

func main() {
	var crds []*extv1.CustomResourceDefinition
	for _, newCrd := range []func() (*extv1.CustomResourceDefinition, error){
		components.NewVirtualMachineCrd,
		components.NewVirtualMachineInstanceCrd,
		components.NewVirtualMachineExportCrd,
		components.NewVirtualMachineSnapshotCrd,
		components.NewVirtualMachineSnapshotContentCrd,
	} {
		crd, err := newCrd()
		if err != nil {
			panic(err)
		}
		crds = append(crds, crd)
	}
	if err := json.NewEncoder(os.Stdout).Encode(crds); err != nil {
		panic(err)
	}
}
GO
  (cd "$work" && go mod tidy >/dev/null 2>&1 || go mod tidy)
  (cd "$work" && go run ./crdgen > "$kv_dir/crds.json.tmp")
  mv "$kv_dir/crds.json.tmp" "$kv_dir/crds.json"
  mv "$kv_dir/virt-exportserver.tmp" "$kv_dir/virt-exportserver"
  rm -rf "$work"
fi
echo "virt-exportserver: $kv_dir" >&2
