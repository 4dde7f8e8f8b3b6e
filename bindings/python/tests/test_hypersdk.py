"""The Python binding against real peers: the example VM (local provider),
the vCenter simulator, qemu-img for every disk written."""

import asyncio
import hashlib
import os
import sys
import subprocess
import json
import shutil
import ssl
import tarfile
import urllib.request

import pytest

import hypersdk
from conftest import qemu_img


def check_ova_disks(ova, tmp_path):
    """Every VMDK in the OVA passes qemu-img check."""
    out = tmp_path / "extracted"
    with tarfile.open(ova) as t:
        names = [m.name for m in t.getmembers() if m.name.endswith(".vmdk")]
        assert names
        t.extractall(out, filter="data")
    for n in names:
        qemu_img("check", str(out / n))
        assert "streamOptimized" in qemu_img("info", str(out / n)) or "vmdk" in qemu_img("info", str(out / n))
    return names


def test_list_search_and_describe_the_example_vm(examples):
    vms = hypersdk.local(examples)
    assert vms.name == "local"
    listed = vms.list_vms()
    assert [v.name for v in listed] == ["demo-vm"]
    assert listed[0].disks == 2 and listed[0].power_state == "off"
    assert [v.name for v in vms.search_vms("demo-*", min_cpus=2)] == ["demo-vm"]
    assert vms.search_vms("nothing-*") == []
    spec = vms.get_vm("demo-vm")
    assert len(spec["disks"]) == 2
    with pytest.raises(hypersdk.InvalidArgument, match="regular expression"):
        vms.search_vms(name_regex="(")


def test_blocking_export_with_progress_callback_then_verify(examples, tmp_path):
    events = []
    vms = hypersdk.local(examples)
    disks = {d["name"] for d in vms.get_vm("demo-vm")["disks"]}
    report = vms.export("demo-vm", tmp_path / "out", verify=True, on_progress=events.append)
    assert report.location == str(tmp_path / "out" / "demo-vm.ova")
    assert report.verified and report.format == "ova" and report.size == os.path.getsize(report.location)
    assert events and events[-1].phase == "done"
    assert {e.disk for e in events if e.phase == "disk"} == disks
    sha = hashlib.sha256(open(report.location, "rb").read()).hexdigest()
    assert report.raw["ova"]["digest"] == sha
    package = hypersdk.verify(report.location)
    assert package.verified and package.vms == ["demo-vm"] and package.manifest == "demo-vm.mf"
    check_ova_disks(report.location, tmp_path)


def test_signed_export_names_its_signer(examples, tmp_path):
    import subprocess
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=py", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    vms = hypersdk.local(examples)
    report = vms.export("demo-vm", tmp_path / "out", sign_key_file=key, sign_cert_file=cert,
                        hardware_version="vmx-13")
    with tarfile.open(report.location) as t:
        assert [m.name for m in t.getmembers()][:3] == ["demo-vm.ovf", "demo-vm.mf", "demo-vm.cert"]
        ovf = t.extractfile("demo-vm.ovf").read().decode()
    assert "<vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>" in ovf
    package = hypersdk.verify(report.location)
    assert package.verified and package.signed_by.startswith("SHA256 signature")
    with pytest.raises(hypersdk.InvalidArgument, match="sign_cert_file"):
        vms.export("demo-vm", tmp_path / "bad", sign_key_file=key)


async def test_asyncio_export_events_and_awaitable_report(examples, tmp_path):
    vms = hypersdk.local(examples)
    assert [v.name for v in await vms.list_vms_async()] == ["demo-vm"]
    job = vms.start_export("demo-vm", tmp_path, format="ovf", digest="sha512")
    phases = [e.phase async for e in job]
    report = await job
    assert job.done and phases[-1] == "done" and "disk" in phases
    assert report.format == "ovf" and report.digest_algorithm == "SHA512"
    for f in report.files:
        if f["name"].endswith(".vmdk"):
            qemu_img("check", os.path.join(report.location, f["name"]))
    assert hypersdk.verify(report.location).verified
    # The same with the callback form.
    seen = []
    report2 = await vms.export_async("demo-vm", tmp_path / "again", on_progress=seen.append)
    assert seen and report2.verified is False and os.path.exists(report2.location)


def test_compressed_encrypted_export_unwraps_to_a_verified_package(examples, tmp_path):
    secret = tmp_path / "pass.txt"
    secret.write_text("correct horse battery staple\n")
    report = hypersdk.local(examples).export("demo-vm", tmp_path / "out", compress="zstd:3",
                                             encrypt_passphrase_file=secret)
    assert report.location.endswith("demo-vm.ova.zst.enc")
    assert report.encrypted and report.compression.startswith("zstd")
    # Verified in one pass through decryption and decompression.
    assert hypersdk.verify(report.location, passphrase_file=secret).verified
    with pytest.raises(hypersdk.CryptoError) as err:
        hypersdk.verify(report.location)
    assert err.value.code == "crypto" and "encrypted" in str(err.value)
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("nope\n")
    plain = tmp_path / "plain.ova"
    with pytest.raises(hypersdk.CryptoError):
        hypersdk.unwrap(report.location, plain, passphrase_file=wrong)
    assert not plain.exists()
    size = hypersdk.unwrap(report.location, plain, passphrase_file=secret)
    assert size == os.path.getsize(plain)
    assert hypersdk.verify(plain).verified
    check_ova_disks(plain, tmp_path)


def test_errors_are_specific_exceptions_with_codes(examples, tmp_path):
    vms = hypersdk.local(examples)
    with pytest.raises(hypersdk.NotFound) as e:
        vms.export("no-such-vm", tmp_path)
    assert e.value.code == "vm_not_found" and isinstance(e.value, hypersdk.HypersdkError)
    with pytest.raises(hypersdk.InvalidArgument, match="lz4"):
        vms.export("demo-vm", tmp_path, compress="lz4")
    with pytest.raises(hypersdk.InvalidArgument, match="digest"):
        vms.export("demo-vm", tmp_path, digest="md5")
    vms.export("demo-vm", tmp_path)
    with pytest.raises(hypersdk.AlreadyExists):
        vms.export("demo-vm", tmp_path)
    assert vms.export("demo-vm", tmp_path, overwrite=True).size > 0
    # A tampered package: the manifest catches it, naming the file.
    bad = tmp_path / "bad.ova"
    shutil.copy(tmp_path / "demo-vm.ova", bad)
    with open(bad, "r+b") as f:
        f.seek(os.path.getsize(bad) - 600_000)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(hypersdk.IntegrityError, match="demo-vm-disk1.vmdk"):
        hypersdk.verify(bad)
    assert not hypersdk.verify(bad, strict=False).verified
    with pytest.raises(hypersdk.FormatError):
        hypersdk.verify(tmp_path / "missing.ova")


async def test_cancel_keeps_the_partial_export_and_resume_finishes_it(examples, tmp_path):
    vms = hypersdk.local(examples)
    whole = vms.export("demo-vm", tmp_path / "whole", format="ovf")
    job = vms.start_export("demo-vm", tmp_path / "cut", format="ovf", bwlimit="16M", checkpoint_mib=1)
    async for e in job:
        if e.phase == "disk" and e.bytes_done >= 24 << 20:
            job.cancel()
    with pytest.raises(hypersdk.Cancelled) as err:
        await job
    assert err.value.code == "cancelled"
    assert not (tmp_path / "cut" / "demo-vm").exists()
    resumed = await vms.export_async("demo-vm", tmp_path / "cut", format="ovf", resume=True)
    assert resumed.resumed_bytes > 0
    assert resumed.manifest == whole.manifest
    for f in whole.files:
        a = open(os.path.join(whole.location, f["name"]), "rb").read()
        b = open(os.path.join(resumed.location, f["name"]), "rb").read()
        assert a == b, f["name"]


async def test_cancelling_the_awaiting_task_cancels_the_export(examples, tmp_path):
    vms = hypersdk.local(examples)
    task = asyncio.ensure_future(vms.export_async("demo-vm", tmp_path, bwlimit="4M", no_checkpoint=True))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The export stops and leaves nothing behind (no checkpoint asked for).
    for _ in range(50):
        if not os.listdir(tmp_path):
            break
        await asyncio.sleep(0.1)
    assert os.listdir(tmp_path) == []


def test_vsphere_simulator_export_with_a_verified_certificate(vcsim, tmp_path):
    with hypersdk.vsphere(vcsim["url"], vcsim["user"], vcsim["password"],
                          ca_file=vcsim["ca_file"]) as vc:
        assert vc.name == "vsphere"
        names = [v.name for v in vc.list_vms()]
        assert "pyvm" in names
        [vm] = vc.search_vms("pyvm")
        assert vm.disks == 2 and vm.total_capacity == 10 << 20
        report = vc.export("pyvm", tmp_path, verify=True)
    assert report.provider == "vsphere" and report.verified
    assert hypersdk.verify(report.location).verified
    check_ova_disks(report.location, tmp_path)


async def test_vsphere_simulator_async_login_thumbprint_and_bad_password(vcsim, tmp_path):
    vc = await hypersdk.vsphere_async(vcsim["url"], vcsim["user"], vcsim["password"],
                                      thumbprint=vcsim["thumbprint"])
    async with vc:
        assert "pyvm" in [v.name for v in await vc.search_vms_async("py*")]
        with pytest.raises(hypersdk.NotFound):
            await vc.export_async("missing-vm", tmp_path)
        report = await vc.export_async("pyvm", tmp_path, format="ovf")
        assert report.format == "ovf" and hypersdk.verify(report.location).verified
    with pytest.raises(hypersdk.ProviderError):
        # An unpinned self-signed certificate is refused by default.
        hypersdk.vsphere(vcsim["url"], vcsim["user"], vcsim["password"])


def test_any_provider_through_the_registry(vcsim, tmp_path, monkeypatch):
    assert [k["kind"] for k in hypersdk.provider_kinds()] == ["local", "vsphere", "aws", "azure", "gcp", "kubevirt", "proxmox", "hyperv"]
    # A URL, and the password the way govc users give it: GOVC_PASSWORD.
    host = vcsim["url"].split("://", 1)[1].split("/", 1)[0]
    monkeypatch.setenv("GOVC_PASSWORD", vcsim["password"])
    with hypersdk.connect(f"vsphere://{vcsim['user']}@{host}", ca_file=vcsim["ca_file"]) as vc:
        assert vc.name == "vsphere" and [v.name for v in vc.search_vms("pyvm")] == ["pyvm"]
    with pytest.raises(hypersdk.InvalidArgument, match="unknown field `colour`"):
        hypersdk.connect("vsphere", url=vcsim["url"], colour="blue")
    with pytest.raises(hypersdk.InvalidArgument, match="unknown provider kind 'xenserver'"):
        hypersdk.connect("xenserver")
    with pytest.raises(hypersdk.InvalidArgument, match="password in it"):
        hypersdk.connect("vsphere://root:secret@vc.example")


def test_export_into_s3_reads_back_with_boto3(examples, tmp_path, monkeypatch):
    """An s3:// output goes to the bucket (moto's server, in this process),
    never to a local directory named 's3:'; boto3 reads the package back."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for k, v in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                     "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="py-exports")
        monkeypatch.chdir(tmp_path)
        report = hypersdk.local(examples).export("demo-vm", "s3://py-exports/wave/", verify=True)
        assert report.location == "s3://py-exports/wave/demo-vm.ova"
        assert not os.path.exists(tmp_path / "s3:")
        s3.download_file("py-exports", "wave/demo-vm.ova", str(tmp_path / "got.ova"))
        assert hypersdk.verify(tmp_path / "got.ova").verified
        with pytest.raises(hypersdk.InvalidArgument):
            hypersdk.local(examples).export("demo-vm", "ftp://host/x/")
    finally:
        server.stop()


def test_export_into_gcs_reads_back_with_googles_client(examples, tmp_path, monkeypatch):
    """A gs:// output goes to the bucket (gcp-storage-emulator, found through
    STORAGE_EMULATOR_HOST as Google's clients find it); Google's client
    reads the package back."""
    storage = pytest.importorskip("google.cloud.storage")
    from google.auth.credentials import AnonymousCredentials
    from google.api_core.client_options import ClientOptions

    script = os.path.join(os.path.dirname(__file__), "../../../tests/peers/gcs_emulator.py")
    peer = subprocess.Popen([sys.executable, script, "--bucket", "py-exports"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        port = json.loads(peer.stdout.readline())["port"]
        endpoint = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
        monkeypatch.chdir(tmp_path)
        report = hypersdk.local(examples).export("demo-vm", "gs://py-exports/wave/", verify=True)
        assert report.location == "gs://py-exports/wave/demo-vm.ova"
        assert not os.path.exists(tmp_path / "gs:")
        gcs = storage.Client(project="p", credentials=AnonymousCredentials(),
                             client_options=ClientOptions(api_endpoint=endpoint))
        gcs.bucket("py-exports").blob("wave/demo-vm.ova").download_to_filename(
            str(tmp_path / "got.ova"))
        assert hypersdk.verify(tmp_path / "got.ova").verified
        assert hypersdk.verify("gs://py-exports/wave/demo-vm.ova").verified
    finally:
        peer.stdin.close()
        peer.wait(timeout=30)


def test_kubevirt_vm_through_the_registry(tmp_path):
    """connect("kubevirt", kubeconfig=…) against the real kube-apiserver and
    virt-exportserver (tests/peers/kube_cluster.py): the VM lists, exports
    as an OVA whose disks equal the PVCs' images, and the export objects
    are gone afterwards."""
    peers = os.path.join(os.path.dirname(__file__), "../../../tests/peers")
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    (tmp_path / "kube").mkdir()
    cluster = subprocess.Popen(
        [sys.executable, os.path.join(peers, "kube_cluster.py"), "--dir", str(tmp_path / "kube"),
         "--volumes", str(volumes)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        info = json.loads(cluster.stdout.readline())
        subprocess.run([sys.executable, os.path.join(peers, "seed_kubevirt_vm.py"),
                        f"https://127.0.0.1:{info['port']}", info["token"],
                        str(tmp_path / "kube/certs/apiserver.crt"), str(volumes), "web-1"],
                       check=True, stdout=subprocess.DEVNULL, timeout=120)
        with hypersdk.connect("kubevirt", kubeconfig=info["kubeconfig"]) as k8s:
            assert [v.name for v in k8s.list_vms()] == ["web-1"]
            assert k8s.get_vm("web-1")["cpus"] == 4
            report = k8s.export("web-1", tmp_path / "out", verify=True)
            assert report.verified and report.location.endswith("web-1.ova")
            with pytest.raises(hypersdk.HypersdkError, match="not a VirtualMachine name"):
                k8s.get_vm("../etc")
        names = check_ova_disks(report.location, tmp_path)
        assert sorted(names) == ["web-1-disk1.vmdk", "web-1-disk2.vmdk"]
        for n, pvc in ((1, "web-1-root"), (2, "web-1-data")):
            qemu_img("compare", "-q", str(tmp_path / "extracted" / f"web-1-disk{n}.vmdk"),
                     str(volumes / "default" / pvc / "disk.img"))
        ca = ssl.create_default_context(cafile=str(tmp_path / "kube/certs/apiserver.crt"))
        req = urllib.request.Request(
            f"https://127.0.0.1:{info['port']}/apis/export.kubevirt.io/v1beta1/namespaces/default/virtualmachineexports",
            headers={"Authorization": "Bearer " + info["token"]})
        assert json.loads(urllib.request.urlopen(req, context=ca, timeout=30).read())["items"] == []
    finally:
        cluster.stdin.close()
        cluster.wait(timeout=60)
