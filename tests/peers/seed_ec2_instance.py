"""Seeds moto (with moto_ebs.py) with an EC2 instance for the AWS tests.

Usage: seed_ec2_instance.py ENDPOINT ACCESS_KEY SECRET_KEY [DIR] [--big MIB | --single]

Runs an m5.large instance named web-01 (a 1 GiB root volume without
content) with two data volumes made from snapshots written through the EBS
direct APIs with boto3: /dev/sdf (1 GiB: random, text, an explicit zero
block, the last block random) and /dev/sdg (2 GiB: text, random, the last
block text). With DIR, writes each data volume's whole content there as a
sparse raw image (sdf.raw, sdg.raw). Prints {"id": …, "disks": {device:
sha256 of the whole content}, "snapshots": {device: the snapshot it was
made from}}. With --big MIB (for cloud-bench), also
/dev/sdh: MIB rounded up to whole GiB, every other block written (random
and text).

With --single, instead: a t3.micro instance named app-01 with only a root
volume (/dev/sda1, 1 GiB: random, text, zeros, the last block random), as
the classic instance export path takes (it exports the root volume).
"""

import base64
import hashlib
import json
import os
import random
import sys

import boto3

args = sys.argv[1:]
single = "--single" in args
args = [a for a in args if a != "--single"]
big = None
if "--big" in args:
    at = args.index("--big")
    big = int(args[at + 1])
    del args[at:at + 2]
endpoint, key, secret = args[:3]
out = args[3] if len(args) > 3 else None
kw = dict(endpoint_url=endpoint, region_name="us-east-1",
          aws_access_key_id=key, aws_secret_access_key=secret)
ebs = boto3.client("ebs", **kw)
ec2 = boto3.client("ec2", **kw)
BS = 524288
rng = random.Random(7)


def block(kind, n):
    if kind == "random":
        return rng.randbytes(BS)
    if kind == "text":
        t = f"line {n}: the quick brown fox jumps over the lazy dog\n".encode()
        return (t * (BS // len(t) + 1))[:BS]
    return bytes(BS)


def seeded(name, gib, layout):
    snap = ebs.start_snapshot(VolumeSize=gib)["SnapshotId"]
    h = hashlib.sha256()
    blocks = {}
    for index, kind in layout:
        data = block(kind, index)
        blocks[index] = data
        ebs.put_snapshot_block(
            SnapshotId=snap, BlockIndex=index, BlockData=data, DataLength=BS,
            Checksum=base64.b64encode(hashlib.sha256(data).digest()).decode(),
            ChecksumAlgorithm="SHA256")
    ebs.complete_snapshot(SnapshotId=snap, ChangedBlocksCount=len(layout))
    zero = bytes(BS)
    for i in range((gib << 30) // BS):
        h.update(blocks.get(i, zero))
    if out:
        with open(os.path.join(out, name + ".raw"), "wb") as f:
            f.truncate(gib << 30)
            for i, data in blocks.items():
                f.seek(i * BS)
                f.write(data)
    return snap, h.hexdigest()


image = ec2.describe_images(Owners=["amazon"])["Images"][0]
if single:
    root = image.get("RootDeviceName", "/dev/sda1")
    r = ec2.run_instances(
        ImageId=image["ImageId"], MinCount=1, MaxCount=1, InstanceType="t3.micro",
        BlockDeviceMappings=[{"DeviceName": root, "Ebs": {"VolumeSize": 1}}],
        TagSpecifications=[{"ResourceType": "instance",
                            "Tags": [{"Key": "Name", "Value": "app-01"}]}])
    i = r["Instances"][0]
    old = i["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    ec2.detach_volume(VolumeId=old, InstanceId=i["InstanceId"], Device=root)
    ec2.delete_volume(VolumeId=old)
    snap, digest = seeded("root", 1, [(0, "random"), (1, "text"), (7, "zeros"), (2047, "random")])
    vol = ec2.create_volume(SnapshotId=snap, AvailabilityZone=i["Placement"]["AvailabilityZone"], Size=1)["VolumeId"]
    ec2.attach_volume(VolumeId=vol, InstanceId=i["InstanceId"], Device=root)
    print(json.dumps({"id": i["InstanceId"], "disks": {root: digest}, "snapshots": {root: snap}}))
    sys.exit(0)
root = image.get("RootDeviceName", "/dev/sda1")
r = ec2.run_instances(
    ImageId=image["ImageId"], MinCount=1, MaxCount=1, InstanceType="m5.large",
    BlockDeviceMappings=[{"DeviceName": root, "Ebs": {"VolumeSize": 1}}],
    TagSpecifications=[{"ResourceType": "instance",
                        "Tags": [{"Key": "Name", "Value": "web-01"}]}])
i = r["Instances"][0]
zone = i["Placement"]["AvailabilityZone"]
disks = {}
snapshots = {}
volumes = [
    ("/dev/sdf", 1, [(0, "random"), (1, "text"), (5, "zeros"), (2047, "random")]),
    ("/dev/sdg", 2, [(3, "text"), (100, "random"), (4095, "text")]),
]
if big:
    gib = -(-big // 1024)
    volumes.append(("/dev/sdh", gib, [(n, "random" if n % 4 else "text")
                                     for n in range(0, (gib << 30) // BS, 2)]))
for dev, gib, layout in volumes:
    snap, digest = seeded(dev.rsplit("/", 1)[1], gib, layout)
    vol = ec2.create_volume(SnapshotId=snap, AvailabilityZone=zone, Size=gib)["VolumeId"]
    ec2.attach_volume(VolumeId=vol, InstanceId=i["InstanceId"], Device=dev)
    disks[dev] = digest
    snapshots[dev] = snap
print(json.dumps({"id": i["InstanceId"], "disks": disks, "snapshots": snapshots}))
