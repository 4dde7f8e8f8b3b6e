"""Seeds the ARM stub (azure_arm.py) and Azurite with a VM for the Azure tests.

Usage: seed_azure_vm.py ARM_ENDPOINT BLOB_ENDPOINT ACCOUNT_KEY [DIR] [--stopped] [--big MIB]

A Standard_D2s_v3 Linux VM named web-02 in resource group rg-hypersdk,
Trusted Launch (UEFI, secure boot), with two NICs and three managed disks,
each a fixed VHD (made by qemu-img from a raw image) written into a page
blob in Azurite with only its non-zero pages, as Azure stores them:
  web-02_OsDisk  16 MiB: random, text, zeros, random in the last MiB
  web-02-data1    9 MiB: text at the start, a random MiB at 3 MiB, the rest zeros
  web-02-data2    5 MiB (or --big MIB): random and text stripes
With DIR, writes each disk's raw content there (NAME.raw). Prints
{"id": vm id, "disks": {name: sha256 of the raw content}}.
"""

import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import urllib.request

from azure.storage.blob import BlobServiceClient

MiB = 1 << 20
argv = sys.argv[1:]
big = None
if "--big" in argv:
    at = argv.index("--big")
    big = int(argv[at + 1])
    del argv[at:at + 2]
stopped = "--stopped" in argv
argv = [a for a in argv if a != "--stopped"]
arm, blob_endpoint, key = argv[:3]
out = argv[3] if len(argv) > 3 else None
rng = random.Random(11)
container = BlobServiceClient(account_url=blob_endpoint, credential={
    "account_name": "devstoreaccount1", "account_key": key}).get_container_client("managed-disks")


def text(n, size):
    t = f"line {n}: the quick brown fox jumps over the lazy dog\n".encode()
    return (t * (size // len(t) + 1))[:size]


def content(layout, mib):
    """mib MiB of zeros with (offset MiB, kind) stripes of one MiB each."""
    data = bytearray(mib * MiB)
    for at, kind in layout:
        data[at * MiB:(at + 1) * MiB] = rng.randbytes(MiB) if kind == "random" else text(at, MiB)
    return bytes(data)


def upload(name, raw, tmp):
    src = os.path.join(tmp, name + ".raw")
    vhd = os.path.join(tmp, name + ".vhd")
    with open(src, "wb") as f:
        f.write(raw)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o",
                    "subformat=fixed,force_size=on", src, vhd], check=True)
    blob = f"disks/{name}.vhd"
    size = os.path.getsize(vhd)
    client = container.get_blob_client(blob)
    client.create_page_blob(size)
    with open(vhd, "rb") as f:
        data = f.read()
    # Only non-zero 64 KiB pieces are written, runs of them in one call of
    # at most 4 MiB: the page ranges stay sparse.
    piece, runs = 64 * 1024, []
    for pos in range(0, size, piece):
        end = min(pos + piece, size)
        if not data[pos:end].strip(b"\0"):
            continue
        if runs and runs[-1][1] == pos and end - runs[-1][0] <= 4 * MiB:
            runs[-1][1] = end
        else:
            runs.append([pos, end])
    for start, end in runs:
        client.upload_page(data[start:end], offset=start, length=end - start)
    if out:
        with open(os.path.join(out, name + ".raw"), "wb") as f:
            f.write(raw)
    return blob, hashlib.sha256(raw).hexdigest()


disks = [
    ("web-02_OsDisk", 16, [(0, "random"), (1, "text"), (4, "random"), (15, "random")]),
    ("web-02-data1", 9, [(0, "text"), (3, "random")]),
    ("web-02-data2", big or 5, [(0, "random"), (2, "text")] + [(m, "random" if m % 3 else "text") for m in range(4, (big or 5), 2)]),
]
spec = {
    "name": "web-02", "resource_group": "rg-hypersdk", "size": "Standard_D2s_v3",
    "power": "deallocated" if stopped else "running", "os_type": "Linux",
    "security_type": "TrustedLaunch", "tags": {"env": "test", "owner": "hypersdk"},
    "disks": [], "nics": [
        {"name": "web-02-nic0", "mac": "00-0D-3A-12-34-56", "subnet": "vnet-1/subnets/default"},
        {"name": "web-02-nic1", "mac": "00-0D-3A-AB-CD-EF", "subnet": "vnet-1/subnets/backend"},
    ],
}
digests = {}
with tempfile.TemporaryDirectory() as tmp:
    for i, (name, mib, layout) in enumerate(disks):
        blob, digest = upload(name, content(layout, mib), tmp)
        digests[name] = digest
        spec["disks"].append({"name": name, "blob": blob, "size_bytes": mib * MiB, "lun": i - 1})
req = urllib.request.Request(arm + "/_peer/vm", data=json.dumps(spec).encode(), method="POST",
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req) as r:
    vm = json.load(r)
print(json.dumps({"id": vm["id"], "disks": digests}))
