"""Seeds the Compute Engine stub (gce.py) with an instance for the GCP tests.

Usage: seed_gce_vm.py STUB_ENDPOINT DIR [--stopped] [--big GIB]

An e2-medium Debian instance named web-03 in us-central1-a, Shielded VM
(UEFI, secure boot), with two NICs and two persistent disks, each a sparse
raw file in DIR (NAME.raw) written only where it holds data, as a disk's
blocks are:
  web-03       1 GiB boot disk: random, text, zeros, random at 700 MiB, and
               3000 random bytes ending 1000 bytes before its end (a
               partial last block)
  web-03-data  1 GiB (or --big GIB: a random MiB every other MiB of its
               first 2 GiB): text at the start, a random MiB at 3 MiB
Prints {"id": instance id, "disks": {name: sha256 of the raw content}}.
"""

import hashlib
import json
import os
import random
import sys
import urllib.request

MiB = 1 << 20
GiB = 1 << 30
argv = sys.argv[1:]
big = None
if "--big" in argv:
    at = argv.index("--big")
    big = int(argv[at + 1])
    del argv[at:at + 2]
stopped = "--stopped" in argv
argv = [a for a in argv if a != "--stopped"]
stub, out = argv[:2]
rng = random.Random(13)


def text(n, size):
    t = f"line {n}: the quick brown fox jumps over the lazy dog\n".encode()
    return (t * (size // len(t) + 1))[:size]


def write(name, size, pieces):
    """A sparse file of `size` bytes holding (offset, bytes) pieces."""
    path = os.path.join(out, name + ".raw")
    with open(path, "wb") as f:
        for at, data in pieces:
            f.seek(at)
            f.write(data)
        f.truncate(size)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return path, h.hexdigest()


boot = [(0, rng.randbytes(MiB)), (MiB, text(1, MiB)), (700 * MiB, rng.randbytes(MiB)),
        (GiB - 4000, rng.randbytes(3000))]
if big:
    data_size = big * GiB
    data = [(i * MiB, rng.randbytes(MiB)) for i in range(0, min(2048, big * 1024), 2)]
else:
    data_size = GiB
    data = [(0, text(0, 64 * 1024)), (3 * MiB, rng.randbytes(MiB))]
disks, sums = [], {}
for name, size, pieces, is_boot in [("web-03", GiB, boot, True), ("web-03-data", data_size, data, False)]:
    path, digest = write(name, size, pieces)
    sums[name] = digest
    disks.append({"name": name, "file": os.path.abspath(path), "sizeGb": size // GiB, "boot": is_boot,
                  "interface": "SCSI"})
spec = {
    "name": "web-03", "machineType": "e2-medium", "status": "TERMINATED" if stopped else "RUNNING",
    "description": "front end, wave 2", "secureBoot": True, "labels": {"env": "prod", "team": "web"},
    "disks": disks,
    "nics": [{"network": "default", "subnetwork": "default", "ip": "10.128.0.7", "nicType": "GVNIC"},
             {"network": "backend", "subnetwork": "backend-eu", "ip": "10.20.0.5", "nicType": "VIRTIO_NET"}],
}
req = urllib.request.Request(stub + "/_peer/instance", data=json.dumps(spec).encode(), method="POST",
                             headers={"Content-Type": "application/json"})
answer = json.loads(urllib.request.urlopen(req, timeout=60).read())
print(json.dumps({"id": answer["selfLink"], "disks": sums}))
