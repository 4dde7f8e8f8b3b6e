#!/usr/bin/python
# Ansible module over the hypersdk Python binding.
# Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hypersdk_export
short_description: Export a VM into a verified OVA/OVF package with hypersdk
description:
  - Exports a virtual machine from local KVM/libvirt domain XML files or from
    vCenter/ESXi into an OVA file or an OVF directory with a manifest, using
    the C(hypersdk) Python package (the hypersdk Rust library).
  - Idempotent. When the package the export would publish already exists and
    checks out against its manifest (C(hypersdk.verify); an encrypted OVA is
    checked with the given key), nothing is done and C(changed) is false.
    An existing package that fails the check, or I(force=true), is exported
    again (replacing it).
  - Supports check mode. It then reports whether an export would run, and
    where it would publish, without writing anything.
version_added: "0.1.0"
author: hypersdk developers
requirements:
  - python >= 3.9
  - hypersdk (the wheel built from bindings/python)
options:
  vm:
    description: The VM's name (or, for C(local), the path of its domain XML file).
    type: str
    required: true
  output:
    description:
      - Directory the package is written below (created if missing), or an object-store
        URL such as C(s3://bucket/prefix/) (credentials from the C(AWS_*) environment,
        C(~/.aws) profiles or the instance role of the host running the module). An
        existing package in a bucket is left as it is (not changed) unless C(force).
    type: str
    required: true
  provider:
    description:
      - Where the VM lives - a provider kind of the hypersdk registry (C(local), C(vsphere),
        and whatever else the installed wheel carries; see C(hypersdk.provider_kinds())) or a
        URL such as C(vsphere://user@vc.example).
    type: str
    default: local
  provider_options:
    description:
      - Further settings of the provider, by their registry names (the fields of a
        hypervisord C(providers:) entry, e.g. C(password_file), C(timeout_secs)). Settings
        not given come from the URL, then from the platform's environment variables
        (GOVC_URL, GOVC_PASSWORD, ...).
    type: dict
  dir:
    description: C(local). Directory of libvirt domain XML files (default /etc/libvirt/qemu).
    type: path
  url:
    description: The platform's API address (C(vsphere) - vCenter/ESXi address or SDK URL).
    type: str
  username:
    description: User name.
    type: str
  password:
    description: Password (never logged).
    type: str
  insecure:
    description: Do not verify the server certificate.
    type: bool
    default: false
  thumbprint:
    description: Accept only the certificate with this SHA-1 or SHA-256 thumbprint.
    type: str
  ca_file:
    description: C(vsphere) only. PEM file of extra trusted CA certificates.
    type: path
  format:
    description: Package layout.
    type: str
    choices: [ova, ovf]
    default: ova
  name:
    description: Package name (default the VM's name, made file-system safe).
    type: str
  compress:
    description: Compress stored files, e.g. C(zstd), C(zstd:3), C(gzip).
    type: str
  digest:
    description: Manifest digest.
    type: str
    choices: [sha256, sha512, sha1]
    default: sha256
  encrypt_key_file:
    description: Encrypt (AES-256-GCM) with the 32-byte key in this file.
    type: path
  encrypt_passphrase_file:
    description: Encrypt with the passphrase on this file's first line.
    type: path
  bwlimit:
    description: Bandwidth limit, e.g. C(100M), or a timetable like C(08:00,10M 18:00,off).
    type: str
  resume:
    description: Continue an interrupted export of the same VM and options.
    type: bool
    default: true
  compression_level:
    description: Deflate level of the VMDK grains, 0-9 (default 1).
    type: int
  parallel_disks:
    description: Disks exported at once (default 2).
    type: int
  idle_timeout_secs:
    description: Seconds without a byte from the source before the read fails (0 waits forever; default 120).
    type: int
  reencode:
    description: Re-encode disks a platform serves already encoded (vSphere's streamOptimized VMDKs).
    type: bool
    default: false
  no_checkpoint:
    description: Keep no checkpoint (an interrupted export starts over).
    type: bool
    default: false
  checkpoint_mib:
    description: MiB between checkpoints of a disk being written (default 64).
    type: int
  hardware_version:
    description: VMware virtual hardware family the descriptor declares, vmx-N (default the VM's own).
    type: str
  sign_key_file:
    description: Sign the manifest with the RSA private key in this PEM file (a .cert file, as ovftool writes).
    type: path
  sign_cert_file:
    description: The X.509 certificate (PEM) of the signing key.
    type: path
  force:
    description: Export again even if a verified package exists.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Export the example VM once
  hypersdk_export:
    vm: demo-vm
    dir: examples/vms
    output: /srv/exports/wave1

- name: Export a vSphere VM, compressed and encrypted
  hypersdk_export:
    provider: vsphere
    url: vcenter.example
    username: migrator@vsphere.local
    password: "{{ vcenter_password }}"
    thumbprint: "AB:CD:..."
    vm: web-01
    output: /srv/exports/wave2
    compress: zstd:3
    encrypt_passphrase_file: /etc/hypersdk/wave2.pass
"""

RETURN = r"""
path:
  description: The package (OVA file or OVF directory).
  returned: always
  type: str
verified:
  description: Whether the package checks out against its manifest.
  returned: when the package exists after the run
  type: bool
report:
  description: The export report (files, digests, sizes, throughput) when an export ran.
  returned: changed and not check mode
  type: dict
manifest:
  description: The manifest's text, when an export ran.
  returned: changed and not check mode
  type: str
"""

import os
import traceback

from ansible.module_utils.basic import AnsibleModule

try:
    import hypersdk
    HAS_HYPERSDK = True
    IMPORT_ERROR = None
except ImportError:
    HAS_HYPERSDK = False
    IMPORT_ERROR = traceback.format_exc()

# Every export option of the library's ExportSettings except those the module
# decides itself (overwrite and verify: an export is verified, then replaces).
EXPORT_OPTIONS = ("format", "name", "compress", "compression_level", "digest", "encrypt_key_file",
                  "encrypt_passphrase_file", "bwlimit", "resume", "parallel_disks",
                  "idle_timeout_secs", "reencode", "no_checkpoint", "checkpoint_mib",
                  "hardware_version", "sign_key_file", "sign_cert_file")


# Module options that are provider settings, by their registry names.
CONNECTION_OPTIONS = {"dir": "dir", "url": "url", "username": "user", "password": "password",
                      "thumbprint": "thumbprint", "ca_file": "ca_file"}


def connect(p):
    """Any provider of the registry: the connection options given, then provider_options."""
    settings = {field: p[opt] for opt, field in CONNECTION_OPTIONS.items() if p[opt] is not None}
    if p["insecure"]:
        settings["insecure"] = True
    settings.update(p["provider_options"] or {})
    return hypersdk.connect(p["provider"], **settings)


def check_existing(path, p):
    """True if the package at path checks out."""
    if not os.path.exists(path):
        return False
    try:
        return hypersdk.verify(path, strict=False, key_file=p["encrypt_key_file"],
                               passphrase_file=p["encrypt_passphrase_file"]).verified
    except hypersdk.HypersdkError:
        return False


def main():
    module = AnsibleModule(
        argument_spec=dict(
            vm=dict(type="str", required=True),
            output=dict(type="str", required=True),
            provider=dict(type="str", default="local"),
            provider_options=dict(type="dict"),
            dir=dict(type="path"),
            url=dict(type="str"),
            username=dict(type="str"),
            password=dict(type="str", no_log=True),
            insecure=dict(type="bool", default=False),
            thumbprint=dict(type="str"),
            ca_file=dict(type="path"),
            format=dict(type="str", choices=["ova", "ovf"], default="ova"),
            name=dict(type="str"),
            compress=dict(type="str"),
            digest=dict(type="str", choices=["sha256", "sha512", "sha1"], default="sha256"),
            encrypt_key_file=dict(type="path", no_log=False),
            encrypt_passphrase_file=dict(type="path", no_log=False),
            bwlimit=dict(type="str"),
            resume=dict(type="bool", default=True),
            compression_level=dict(type="int"),
            parallel_disks=dict(type="int"),
            idle_timeout_secs=dict(type="int"),
            reencode=dict(type="bool", default=False),
            no_checkpoint=dict(type="bool", default=False),
            checkpoint_mib=dict(type="int"),
            hardware_version=dict(type="str"),
            sign_key_file=dict(type="path", no_log=False),
            sign_cert_file=dict(type="path"),
            force=dict(type="bool", default=False),
        ),
        mutually_exclusive=[("encrypt_key_file", "encrypt_passphrase_file")],
        supports_check_mode=True,
    )
    if not HAS_HYPERSDK:
        module.fail_json(msg="the hypersdk Python package is needed (pip install the wheel of bindings/python)",
                         exception=IMPORT_ERROR)
    p = module.params
    options = {k: p[k] for k in EXPORT_OPTIONS if p[k] is not None}
    try:
        provider = connect(p)
    except (hypersdk.HypersdkError, ValueError) as e:
        module.fail_json(msg=f"cannot connect: {e}", code=getattr(e, "code", "invalid_argument"))
    remote = "://" in p["output"]
    if not remote:
        p["output"] = os.path.abspath(os.path.expanduser(p["output"]))
    try:
        if remote:
            if module.check_mode:
                module.exit_json(changed=True, path=p["output"])
            try:
                report = provider.export(p["vm"], p["output"], overwrite=p["force"], verify=True,
                                         **options)
            except hypersdk.AlreadyExists:
                module.exit_json(changed=False, path=p["output"], verified=True)
            module.exit_json(changed=True, path=report.location, verified=report.verified,
                             report=report.raw, manifest=report.manifest)
        path = provider.artifact_path(p["vm"], p["output"], **options)
        if not p["force"] and check_existing(path, p):
            module.exit_json(changed=False, path=path, verified=True)
        if module.check_mode:
            module.exit_json(changed=True, path=path)
        os.makedirs(p["output"], exist_ok=True)
        report = provider.export(p["vm"], p["output"], overwrite=True, verify=True, **options)
        module.exit_json(changed=True, path=report.location, verified=report.verified,
                         report=report.raw, manifest=report.manifest)
    except hypersdk.HypersdkError as e:
        module.fail_json(msg=str(e), code=e.code)
    finally:
        try:
            provider.close()
        except hypersdk.HypersdkError:
            pass


if __name__ == "__main__":
    main()
