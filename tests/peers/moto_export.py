"""VM Import/Export's instance export for moto (5.2.x), which answers
CreateInstanceExportTask, DescribeExportTasks and CancelExportTask with 500
NotImplemented. Added as EC2Response actions that answer through moto's own
serializer (ActionResult), so the shapes are botocore's:

- CreateInstanceExportTask (EC2 API Reference; "Start an instance export
  task", VM Import/Export User Guide): InstanceId, TargetEnvironment
  (vmware | citrix | microsoft), ExportToS3 {DiskImageFormat VMDK | RAW |
  VHD, S3Bucket, S3Prefix}; the file is written to
  `S3Prefix + export-i-XXXXXXXXXXXXXXXXX.FORMAT` in the bucket (which must
  exist). The task copies the instance's root volume as it is when asked
  (moto_ebs.py's volume content), stays `active` for EXPORT_SECONDS, then
  writes the image — a streamOptimized VMDK, a fixed VHD or raw, made by
  qemu-img from the volume's blocks — and is `completed`. The OVA
  container is not made here (InvalidParameterValue).
- DescribeExportTasks: ExportTaskId.N filters; an unknown id is
  InvalidExportTaskID.NotFound.
- CancelExportTask: an `active` task becomes `cancelled` and writes
  nothing; another state is IncorrectState.

Imported by moto_s3.py.
"""

import os
import secrets
import subprocess
import tempfile
import threading
import time

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError, InvalidParameterValueError
from moto.ec2.responses import EC2Response
from moto.s3.models import s3_backends

from moto_ebs import AWS_BLOCK_SIZE, CONTENT

TASKS = {}  # task id -> ExportTask
LOCK = threading.Lock()
SETTINGS = {"seconds": 0.5}
FORMATS = {"VMDK": ("vmdk", ["-O", "vmdk", "-o", "subformat=streamOptimized"]),
           "VHD": ("vhd", ["-O", "vpc", "-o", "subformat=fixed,force_size=on"]),
           "RAW": ("raw", None)}


def _write(task, blocks, size, fmt, account_id):
    time.sleep(SETTINGS["seconds"])
    with LOCK:
        if task["State"] != "active":
            return
    s3 = task["ExportToS3Task"]
    with tempfile.TemporaryDirectory() as work:
        raw = os.path.join(work, "disk.raw")
        with open(raw, "wb") as f:
            for index, block in sorted(blocks.items()):
                f.seek(index * AWS_BLOCK_SIZE)
                f.write(block.block_data)
            f.truncate(size)
        out = raw
        ext, args = FORMATS[fmt]
        if args:
            out = os.path.join(work, "disk." + ext)
            subprocess.run(["qemu-img", "convert", "-f", "raw", *args, raw, out], check=True)
        with open(out, "rb") as f:
            data = f.read()
    with LOCK:
        if task["State"] != "active":
            return
        s3_backends[account_id]["aws"].put_object(s3["S3Bucket"], s3["S3Key"], data)
        task["State"] = "completed"


def create_instance_export_task(self):
    self.error_on_dryrun()
    instance = self.ec2_backend.get_instance(self._get_param("InstanceId"))
    target = self._get_param("TargetEnvironment")
    spec = self._get_param("ExportToS3Task") or {}
    fmt = (spec.get("DiskImageFormat") or "").upper()
    if target not in ("vmware", "citrix", "microsoft"):
        raise InvalidParameterValueError(target)
    if fmt not in FORMATS:
        raise InvalidParameterValueError(spec.get("DiskImageFormat"))
    if spec.get("ContainerFormat"):
        raise InvalidParameterValueError(spec.get("ContainerFormat"))
    bucket = spec.get("S3Bucket") or ""
    if bucket not in s3_backends[self.current_account]["aws"].buckets:
        raise EC2ClientError("InvalidParameter", f"The given S3 bucket ({bucket}) does not exist.")
    root = instance.block_device_mapping.get(instance.root_device_name)
    if root is None:
        raise EC2ClientError("InvalidParameter", "The instance has no root volume.")
    volume = self.ec2_backend.get_volume(root.volume_id)
    tid = "export-i-" + secrets.token_hex(9)[:17]
    task = {
        "ExportTaskId": tid,
        "Description": self._get_param("Description", ""),
        "InstanceExportDetails": {"InstanceId": instance.id, "TargetEnvironment": target},
        "ExportToS3Task": {"DiskImageFormat": fmt.lower(), "S3Bucket": bucket,
                           "S3Key": f"{spec.get('S3Prefix') or ''}{tid}.{FORMATS[fmt][0]}"},
        "State": "active",
        "StatusMessage": "",
    }
    with LOCK:
        TASKS[tid] = task
        shown = dict(task)
    blocks = dict(CONTENT.get(volume.id, {}))
    threading.Thread(target=_write, args=(task, blocks, volume.size << 30, fmt, self.current_account),
                     daemon=True).start()
    return ActionResult({"ExportTask": shown})


def describe_export_tasks(self):
    ids = self._get_param("ExportTaskIds") or []
    with LOCK:
        for i in ids:
            if i not in TASKS:
                raise EC2ClientError("InvalidExportTaskID.NotFound",
                                     f"The export task ID '{i}' does not exist")
        tasks = [dict(t) for k, t in TASKS.items() if not ids or k in ids]
    return ActionResult({"ExportTasks": tasks})


def cancel_export_task(self):
    tid = self._get_param("ExportTaskId")
    with LOCK:
        task = TASKS.get(tid)
        if task is None:
            raise EC2ClientError("InvalidExportTaskID.NotFound",
                                 f"The export task ID '{tid}' does not exist")
        if task["State"] != "active":
            raise EC2ClientError("IncorrectState",
                                 f"Export task {tid} is {task['State']} and cannot be cancelled")
        task["State"] = "cancelled"
    return ActionResult({})


EC2Response.create_instance_export_task = create_instance_export_task
EC2Response.describe_export_tasks = describe_export_tasks
EC2Response.cancel_export_task = cancel_export_task
