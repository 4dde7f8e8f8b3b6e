"""Seeds the Kubernetes API server of kube_cluster.py with a KubeVirt VM.

Usage: seed_kubevirt_vm.py API_URL TOKEN CA_FILE VOLUMES NAME [--running] [--container-disk] [--big MIB]
       [--label K=V]... [--annotation K=V]...

VirtualMachine NAME in namespace default: 2 sockets x 2 cores, 2Gi of
memory, EFI without secure boot, a virtio interface with a fixed MAC on the
pod network and a second on a multus network, and two disks on PVCs:
  NAME-root  16 MiB, virtio: random, text, zeros, a partial last block
  NAME-data   8 MiB (or --big MIB), sata: text, then random every other MiB
Each PVC is a PersistentVolumeClaim object asking for the disk's exact
size, its disk the sparse file VOLUMES/default/PVC/disk.img. --running
marks the VM Running (status.printableStatus, status.ready);
--container-disk adds a containerDisk disk; --label and --annotation add
metadata (labels app=web and kubevirt.io/os=fedora are always there; the
annotation hypersdk.test/links=foreign makes kube_cluster.py's controller
serve hostile links for the VM). Prints {"disks": {PVC: sha256}}.
"""

import hashlib
import json
import os
import random
import ssl
import sys
import urllib.request

MiB = 1 << 20
args = sys.argv[1:]
running = "--running" in args
container = "--container-disk" in args
big = None
if "--big" in args:
    big = int(args[args.index("--big") + 1])
    del args[args.index("--big"):args.index("--big") + 2]
labels = {"app": "web", "kubevirt.io/os": "fedora"}
annotations = {}
# --label K=V and --annotation K=V (repeatable) add metadata to the VM.
for flag, into in (("--label", labels), ("--annotation", annotations)):
    while flag in args:
        i = args.index(flag)
        k, v = args[i + 1].split("=", 1)
        into[k] = v
        del args[i:i + 2]
args = [a for a in args if not a.startswith("--")]
url, token, ca, volumes, name = args[:5]
tls = ssl.create_default_context(cafile=ca)
rng = random.Random(name)


def api(method, path, body):
    req = urllib.request.Request(url + path, method=method, data=json.dumps(body).encode(), headers={
        "Authorization": "Bearer " + token,
        "Content-Type": "application/merge-patch+json" if method == "PATCH" else "application/json"})
    return json.loads(urllib.request.urlopen(req, context=tls, timeout=30).read())


def text(n, size):
    t = f"line {n}: the quick brown fox jumps over the lazy dog\n".encode()
    return (t * (size // len(t) + 1))[:size]


def disk(pvc, size, pieces):
    d = os.path.join(volumes, "default", pvc)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "disk.img")
    with open(path, "wb") as f:
        for at, data in pieces:
            f.seek(at)
            f.write(data)
        f.truncate(size)
    api("POST", "/api/v1/namespaces/default/persistentvolumeclaims", {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": pvc},
        "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
                 "resources": {"requests": {"storage": str(size)}}}})
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


sums = {}
root = f"{name}-root"
sums[root] = disk(root, 16 * MiB, [(0, rng.randbytes(MiB)), (MiB, text(1, MiB)),
                                   (16 * MiB - 5000, rng.randbytes(3000))])
data_size = (big or 8) * MiB
data = f"{name}-data"
sums[data] = disk(data, data_size, [(0, text(0, 64 * 1024))] +
                  [(i * MiB, rng.randbytes(MiB)) for i in range(1, data_size // MiB, 2)])
disks = [{"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1},
         {"name": "data", "disk": {"bus": "sata"}},
         {"name": "cloudinit", "disk": {"bus": "virtio"}}]
vols = [{"name": "root", "persistentVolumeClaim": {"claimName": root}},
        {"name": "data", "dataVolume": {"name": data}},
        {"name": "cloudinit", "cloudInitNoCloud": {"userData": "#cloud-config\n"}}]
if container:
    disks.append({"name": "tools", "disk": {"bus": "virtio"}})
    vols.append({"name": "tools", "containerDisk": {"image": "quay.io/containerdisks/fedora:41"}})
api("POST", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines", {
    "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
    "metadata": {"name": name, "labels": labels, "annotations": annotations},
    "spec": {"runStrategy": "Always" if running else "Halted", "template": {
        "metadata": {"labels": {"kubevirt.io/vm": name}},
        "spec": {
            "domain": {
                "cpu": {"sockets": 2, "cores": 2, "threads": 1},
                "memory": {"guest": "2Gi"},
                "firmware": {"bootloader": {"efi": {"secureBoot": False}}},
                "devices": {"disks": disks, "interfaces": [
                    {"name": "default", "masquerade": {}, "model": "virtio", "macAddress": "02:00:00:aa:bb:01"},
                    {"name": "storage", "bridge": {}, "model": "e1000e", "macAddress": "02:00:00:aa:bb:02"}]},
            },
            "networks": [{"name": "default", "pod": {}},
                         {"name": "storage", "multus": {"networkName": "storage-net"}}],
            "volumes": vols,
        }}}})
if running:
    api("PATCH", f"/apis/kubevirt.io/v1/namespaces/default/virtualmachines/{name}/status",
        {"status": {"printableStatus": "Running", "ready": True, "created": True}})
else:
    api("PATCH", f"/apis/kubevirt.io/v1/namespaces/default/virtualmachines/{name}/status",
        {"status": {"printableStatus": "Stopped"}})
print(json.dumps({"disks": sums}))
