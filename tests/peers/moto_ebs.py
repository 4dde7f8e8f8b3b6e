"""An extension of moto's EC2 and EBS backends (moto 5.2.x) for the AWS
provider's tests, where moto departs from AWS:

- Volumes carry content. A volume made from a snapshot (EC2 API Reference,
  CreateVolume: "SnapshotId — the snapshot from which to create the
  volume") holds that snapshot's blocks; a snapshot of a volume (EC2 API
  Reference, CreateSnapshot) holds the volume's blocks and is readable
  through the EBS direct APIs (EBS API Reference, ListSnapshotBlocks and
  GetSnapshotBlock: any completed snapshot). In moto, a snapshot made by
  EC2 CreateSnapshot is invisible to the EBS direct APIs and volumes hold
  nothing.
- BlockSize is 524288 (EBS API Reference, ListSnapshotBlocks: "BlockSize —
  the size of the blocks in the snapshot, in bytes", 512 KiB on AWS); moto
  reports 512 for blocks of 512 KiB.
- DeleteSnapshot and DeleteVolume drop what they held.
- RegisterImage honours what it is given (EC2 API Reference, RegisterImage:
  "BlockDeviceMapping.N — the block device mapping entries", RootDeviceName,
  Architecture, BootMode); moto ignores them and invents one 15 GiB
  snapshot per AMI.

Imported by moto_s3.py; it only wraps moto's own backend methods.
"""

from moto.core.responses import ActionResult
from moto.ebs.models import Block, EBSSnapshot, ebs_backends
from moto.ec2.models.amis import Ami
from moto.ec2.models.elastic_block_store import EBSBackend as Ec2Volumes
from moto.ec2.responses.amis import AmisResponse

AWS_BLOCK_SIZE = 524288
# Volume id -> {block index: Block}.
CONTENT = {}

_snapshot_init = EBSSnapshot.__init__


def _init(self, account_id, snapshot):
    _snapshot_init(self, account_id, snapshot)
    self.block_size = AWS_BLOCK_SIZE


EBSSnapshot.__init__ = _init


def _copy(block):
    # A fresh token per snapshot, as AWS hands out.
    return Block(block.block_data, block.checksum, block.checksum_algorithm, block.data_length)


_create_volume = Ec2Volumes.create_volume


def _create_volume_with_content(self, size, zone_name, snapshot_id=None, **kw):
    volume = _create_volume(self, size, zone_name, snapshot_id=snapshot_id, **kw)
    if snapshot_id:
        snap = ebs_backends[self.account_id][self.region_name].snapshots.get(snapshot_id)
        if snap is not None:
            CONTENT[volume.id] = {i: _copy(b) for i, b in snap.blocks.items()}
    return volume


Ec2Volumes.create_volume = _create_volume_with_content

_create_snapshot = Ec2Volumes.create_snapshot


def _create_snapshot_with_content(self, volume_id, description, owner_id=None, from_ami=None):
    snapshot = _create_snapshot(self, volume_id, description, owner_id, from_ami)
    ebs = ebs_backends[self.account_id][self.region_name]
    if snapshot.id not in ebs.snapshots:
        # EBS StartSnapshot registers its own right after; this is EC2's.
        e = EBSSnapshot(account_id=self.account_id, snapshot=snapshot)
        e.status = "completed"
        e.blocks = {i: _copy(b) for i, b in CONTENT.get(volume_id, {}).items()}
        ebs.snapshots[snapshot.id] = e
    return snapshot


Ec2Volumes.create_snapshot = _create_snapshot_with_content

_delete_snapshot = Ec2Volumes.delete_snapshot


def _delete_snapshot_and_blocks(self, snapshot_id):
    snapshot = _delete_snapshot(self, snapshot_id)
    ebs_backends[self.account_id][self.region_name].snapshots.pop(snapshot_id, None)
    return snapshot


Ec2Volumes.delete_snapshot = _delete_snapshot_and_blocks

_delete_volume = Ec2Volumes.delete_volume


def _delete_volume_and_content(self, volume_id):
    volume = _delete_volume(self, volume_id)
    CONTENT.pop(volume_id, None)
    return volume


Ec2Volumes.delete_volume = _delete_volume_and_content


def _register_image(self):
    """RegisterImage with its block device mappings, root device,
    architecture and boot mode kept on the AMI."""
    self.error_on_dryrun()
    image = self.ec2_backend.register_image(
        self._get_param("Name"), self._get_param("Description", ""))
    mappings = []
    for m in self._get_param("BlockDeviceMappings", []):
        ebs = m.get("Ebs") or {}
        if not ebs.get("SnapshotId"):
            continue
        snap = self.ec2_backend.get_snapshot(ebs["SnapshotId"])
        mappings.append({
            "DeviceName": m["DeviceName"],
            "Ebs": {"SnapshotId": snap.id,
                    "VolumeSize": int(ebs.get("VolumeSize") or snap.volume.size),
                    "DeleteOnTermination": True, "VolumeType": "gp3"},
        })
    if mappings:
        image._mappings = mappings
    for param, attr in [("RootDeviceName", "root_device_name"),
                        ("Architecture", "architecture"), ("BootMode", "boot_mode")]:
        if self._get_param(param):
            setattr(image, attr, self._get_param(param))
    return ActionResult({"ImageId": image.id})


AmisResponse.register_image = _register_image
_moto_mappings = Ami.block_device_mappings


def _mappings(self):
    return getattr(self, "_mappings", None) or _moto_mappings.fget(self)


Ami.block_device_mappings = property(_mappings)
