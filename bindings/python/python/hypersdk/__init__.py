"""Export virtual machines into verified OVA/OVF packages.

The Python face of the hypersdk Rust library: every call goes into the
library (no logic is redone here), the heavy lifting runs on its own
threads with the GIL released.

Blocking::

    import hypersdk
    vms = hypersdk.local("examples/vms")
    report = vms.export("demo-vm", "out", verify=True,
                        on_progress=lambda e: print(e.phase, e.bytes_done))
    print(report.location, report.manifest)

asyncio::

    export = vms.start_export("demo-vm", "out", format="ovf")
    async for event in export:          # progress events until the end
        print(event.disk, event.bytes_done, event.bytes_total)
    report = await export               # or export.cancel()

Errors are subclasses of :class:`HypersdkError` with a ``code``:
:class:`NotFound`, :class:`AuthError`, :class:`IntegrityError`,
:class:`CryptoError`, :class:`AlreadyExists`, :class:`InvalidArgument`,
:class:`ProviderError`, :class:`DiskReadError`, :class:`FormatError`,
:class:`SinkError`, :class:`Cancelled`, :class:`InternalError`.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from os import PathLike, fspath
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Optional, Tuple, Union

from . import _native
from ._native import (
    AlreadyExists,
    AuthError,
    Cancelled,
    CryptoError,
    DiskReadError,
    FormatError,
    HypersdkError,
    IntegrityError,
    InternalError,
    InvalidArgument,
    NotFound,
    ProviderError,
    SinkError,
)

__version__: str = _native.__version__

__all__ = [
    "connect", "connect_async", "provider_kinds", "local", "vsphere", "vsphere_async", "verify", "verify_async", "unwrap",
    "Provider", "Export", "VmInfo", "ProgressEvent", "ExportReport", "PackageReport",
    "HypersdkError", "NotFound", "AuthError", "IntegrityError", "CryptoError",
    "AlreadyExists", "InvalidArgument", "ProviderError", "DiskReadError",
    "FormatError", "SinkError", "Cancelled", "InternalError",
]

StrPath = Union[str, "PathLike[str]"]


@dataclass(frozen=True)
class VmInfo:
    """A VM as a listing shows it."""

    id: str
    name: str
    power_state: str
    cpus: int
    memory_mib: int
    guest_os: str
    disks: int
    total_capacity: int
    folder: Optional[str] = None

    @classmethod
    def _of(cls, d: Dict[str, Any]) -> "VmInfo":
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ProgressEvent:
    """Progress of one disk (or of packaging/verification)."""

    phase: str
    """``disk``, ``diskdone``, ``packaging``, ``verify`` or ``done``."""
    disk_index: int
    disk: str
    bytes_done: int
    bytes_total: int
    rate_bps: float
    """Bytes per second over the last seconds (0 in the first second); bytes
    kept from an interrupted run are never counted."""
    eta_secs: Optional[float] = None
    bytes_resumed: int = 0
    """Of ``bytes_done``, those an interrupted run did before this one."""

    @classmethod
    def _of(cls, d: Dict[str, Any]) -> "ProgressEvent":
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ExportReport:
    """The result of one export; ``raw`` holds every field the library reports."""

    vm: str
    provider: str
    format: str
    location: str
    size: int
    digest_algorithm: str
    manifest: str
    verified: bool
    encrypted: bool
    compression: Optional[str]
    bytes_read: int
    resumed_bytes: int
    duration_secs: float
    throughput_mb_s: float
    files: List[Dict[str, Any]]
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def _of(cls, d: Dict[str, Any]) -> "ExportReport":
        names = [k for k in cls.__dataclass_fields__ if k != "raw"]
        return cls(**{k: d.get(k) for k in names}, raw=d)


@dataclass(frozen=True)
class PackageReport:
    """What a package holds and whether every file matches its manifest."""

    kind: str
    path: str
    verified: bool
    failures: List[str]
    files: List[Tuple[str, int]]
    manifest: Optional[str]
    vms: List[str]
    #: Who signed the manifest (``.cert``), once its signature checked out.
    signed_by: Optional[str] = None

    @classmethod
    def _of(cls, d: Dict[str, Any]) -> "PackageReport":
        d = dict(d)
        d["files"] = [tuple(f) for f in d["files"]]
        return cls(**d)


def _settings(options: Dict[str, Any]) -> str:
    clean = {}
    for k, v in options.items():
        if v is None:
            continue
        clean[k] = fspath(v) if isinstance(v, PathLike) else v
    return json.dumps(clean)


class Export:
    """A running export: iterate it for progress (``for``/``async for``),
    ``wait()`` or ``await`` it for the :class:`ExportReport`, ``cancel()`` it."""

    def __init__(self, native: Any) -> None:
        self._native = native

    def cancel(self) -> None:
        """Asks the export to stop; waiting then raises :class:`Cancelled`."""
        self._native.cancel()

    @property
    def done(self) -> bool:
        """Whether it has ended."""
        return self._native.done()

    def wait(self) -> ExportReport:
        """Blocks until the end; the report, or raises. Ctrl-C cancels the export."""
        return ExportReport._of(json.loads(self._native.wait()))

    def next_event(self, timeout: Optional[float] = None) -> Tuple[bool, Optional[ProgressEvent]]:
        """``(ended, event)``: the next progress event, waiting at most
        ``timeout`` seconds (``(False, None)`` when none came in time);
        ``(True, None)`` once the export has ended and every event was read."""
        ended, text = self._native.next_event(timeout)
        return ended, (ProgressEvent._of(json.loads(text)) if text is not None else None)

    def __iter__(self) -> Iterator[ProgressEvent]:
        while True:
            ended, event = self.next_event()
            if ended:
                return
            if event is not None:
                yield event

    def __aiter__(self) -> AsyncIterator[ProgressEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[ProgressEvent]:
        while True:
            text = await self._native.next_event_async()
            if text is None:
                return
            yield ProgressEvent._of(json.loads(text))

    async def wait_async(self) -> ExportReport:
        """Awaits the end; the report, or raises. Cancelling the awaiting
        task cancels the export."""
        try:
            text = await self._native.wait_async()
        except asyncio.CancelledError:
            self.cancel()
            raise
        return ExportReport._of(json.loads(text))

    def __await__(self):
        return self.wait_async().__await__()


class Provider:
    """A connected platform: list, search and describe VMs, and export them."""

    def __init__(self, native: Any) -> None:
        self._native = native

    @property
    def name(self) -> str:
        """``local`` or ``vsphere``."""
        return self._native.name

    def list_vms(self) -> List[VmInfo]:
        """Every VM."""
        return [VmInfo._of(v) for v in json.loads(self._native.list_vms())]

    async def list_vms_async(self) -> List[VmInfo]:
        return [VmInfo._of(v) for v in json.loads(await self._native.list_vms_async())]

    @staticmethod
    def _query(name, name_regex, folder, power_state, guest_os, min_cpus, min_memory_mib) -> str:
        return _settings(dict(name=name, name_regex=name_regex, folder=folder,
                              power_state=power_state, guest_os=guest_os,
                              min_cpus=min_cpus, min_memory_mib=min_memory_mib))

    def search_vms(self, name: Optional[str] = None, *, name_regex: Optional[str] = None,
                   folder: Optional[str] = None, power_state: Optional[str] = None,
                   guest_os: Optional[str] = None, min_cpus: Optional[int] = None,
                   min_memory_mib: Optional[int] = None) -> List[VmInfo]:
        """VMs matching every given filter: ``name`` is a glob (``web-*``),
        ``power_state`` one of ``on``, ``off``, ``suspended``."""
        q = self._query(name, name_regex, folder, power_state, guest_os, min_cpus, min_memory_mib)
        return [VmInfo._of(v) for v in json.loads(self._native.search_vms(q))]

    async def search_vms_async(self, name: Optional[str] = None, *, name_regex: Optional[str] = None,
                               folder: Optional[str] = None, power_state: Optional[str] = None,
                               guest_os: Optional[str] = None, min_cpus: Optional[int] = None,
                               min_memory_mib: Optional[int] = None) -> List[VmInfo]:
        q = self._query(name, name_regex, folder, power_state, guest_os, min_cpus, min_memory_mib)
        return [VmInfo._of(v) for v in json.loads(await self._native.search_vms_async(q))]

    def get_vm(self, vm: str) -> Dict[str, Any]:
        """The full description of one VM (hardware, disks, NICs), as a dict."""
        return json.loads(self._native.get_vm(vm))

    async def get_vm_async(self, vm: str) -> Dict[str, Any]:
        return json.loads(await self._native.get_vm_async(vm))

    def artifact_path(self, vm: str, output: StrPath, **options: Any) -> str:
        """Where :meth:`export` with these options would publish ``vm``: the
        OVA file (with ``.zst``/``.gz``/``.enc`` when wrapped) or OVF
        directory below ``output``. Nothing is written."""
        settings = _settings(dict(options, format=options.get("format", "ova")))
        return os.path.join(fspath(output), self._native.artifact_name(vm, settings))

    def start_export(self, vm: str, output: StrPath, *, format: str = "ova",
                     name: Optional[str] = None, overwrite: bool = False,
                     compress: Optional[str] = None, compression_level: Optional[int] = None,
                     digest: Optional[str] = None, encrypt_key_file: Optional[StrPath] = None,
                     encrypt_passphrase_file: Optional[StrPath] = None,
                     bwlimit: Optional[str] = None, verify: bool = False,
                     parallel_disks: Optional[int] = None,
                     idle_timeout_secs: Optional[int] = None, reencode: bool = False,
                     resume: bool = False, no_checkpoint: bool = False,
                     checkpoint_mib: Optional[int] = None,
                     hardware_version: Optional[str] = None,
                     sign_key_file: Optional[StrPath] = None,
                     sign_cert_file: Optional[StrPath] = None) -> Export:
        """Starts exporting ``vm`` into ``output``, a directory or an S3 URL
        (``s3://bucket/prefix/``, credentials from ``AWS_*`` variables, ``~/.aws``
        or the instance role); returns at once.

        ``format``: ``ova`` or ``ovf``; ``compress``: ``zstd``, ``zstd:LEVEL``,
        ``gzip``, ``gzip:LEVEL``; ``digest``: ``sha256``, ``sha512``, ``sha1``;
        ``encrypt_key_file``/``encrypt_passphrase_file``: AES-256-GCM;
        ``bwlimit``: ``100M`` or a timetable ``"08:00,10M 18:00,off"``;
        ``verify``: read every stored file back against the manifest;
        ``resume``: continue an interrupted export of the same VM and options;
        ``hardware_version``: the VMware hardware family declared, ``vmx-N``;
        ``sign_key_file``/``sign_cert_file``: sign the manifest (a ``.cert``).
        """
        settings = _settings(dict(
            format=format, name=name, overwrite=overwrite, compress=compress,
            compression_level=compression_level, digest=digest,
            encrypt_key_file=encrypt_key_file, encrypt_passphrase_file=encrypt_passphrase_file,
            bwlimit=bwlimit, verify=verify, parallel_disks=parallel_disks,
            idle_timeout_secs=idle_timeout_secs, reencode=reencode, resume=resume,
            no_checkpoint=no_checkpoint, checkpoint_mib=checkpoint_mib,
            hardware_version=hardware_version, sign_key_file=sign_key_file,
            sign_cert_file=sign_cert_file))
        return Export(self._native.start_export(vm, fspath(output), settings))

    def export(self, vm: str, output: StrPath, *,
               on_progress: Optional[Callable[[ProgressEvent], None]] = None,
               **options: Any) -> ExportReport:
        """Exports ``vm`` into the directory ``output`` and waits (blocking);
        ``on_progress`` is called in this thread for each event. Options as
        :meth:`start_export`. Ctrl-C cancels the export."""
        job = self.start_export(vm, output, **options)
        if on_progress is not None:
            try:
                for event in job:
                    on_progress(event)
            except BaseException:
                job.cancel()
                raise
        return job.wait()

    async def export_async(self, vm: str, output: StrPath, *,
                           on_progress: Optional[Callable[[ProgressEvent], None]] = None,
                           **options: Any) -> ExportReport:
        """:meth:`export` for asyncio: cancelling the task cancels the export."""
        job = self.start_export(vm, output, **options)
        try:
            if on_progress is not None:
                async for event in job:
                    on_progress(event)
            return await job
        except BaseException:
            job.cancel()
            raise

    def close(self) -> None:
        """Ends the platform session (vSphere logout)."""
        self._native.close()

    async def close_async(self) -> None:
        await self._native.close_async()

    def __enter__(self) -> "Provider":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> "Provider":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close_async()


def _provider_settings(settings: Dict[str, Any]) -> str:
    return json.dumps({k: (fspath(v) if isinstance(v, PathLike) else v)
                       for k, v in settings.items() if v is not None})


def connect(kind_or_url: str, **settings: Any) -> Provider:
    """Connects any provider this build carries (see :func:`provider_kinds`):
    ``kind_or_url`` is a kind (``"local"``, ``"vsphere"``, …) or a URL
    (``"vsphere://user@vc.example"``), ``settings`` its fields (``url``,
    ``user``, ``password``, ``password_file``, ``insecure``, ``thumbprint``,
    ``ca_file``, ``dir``, …, as in the daemon's ``providers:`` entries).
    Fields not given come from the URL, then from the platform's own
    environment variables (``GOVC_URL``, ``GOVC_PASSWORD``, …). An unknown
    field raises :class:`InvalidArgument` naming it."""
    return Provider(_native.connect(kind_or_url, _provider_settings(settings)))


async def connect_async(kind_or_url: str, **settings: Any) -> Provider:
    """:func:`connect` for asyncio."""
    return Provider(await _native.connect_async(kind_or_url, _provider_settings(settings)))


def provider_kinds() -> List[Dict[str, str]]:
    """The provider kinds this build carries: ``[{"kind": …, "about": …}]``."""
    return json.loads(_native.provider_kinds())


def local(dir: StrPath = "/etc/libvirt/qemu") -> Provider:
    """KVM/libvirt VMs described by the domain XML files in ``dir``; a VM is
    named by its domain name, or by the path of its XML file."""
    return connect("local", dir=dir)


def vsphere(url: str, user: str, password: str, *, insecure: bool = False,
            thumbprint: Optional[str] = None, ca_file: Optional[StrPath] = None) -> Provider:
    """Logs in to vCenter/ESXi at ``url`` (``vc.example`` or a full
    ``https://…/sdk``). The certificate is verified unless ``thumbprint``
    pins it or ``insecure`` is set; ``ca_file`` adds trusted CAs."""
    return connect("vsphere", url=url, user=user, password=password, insecure=insecure,
                   thumbprint=thumbprint, ca_file=ca_file)


async def vsphere_async(url: str, user: str, password: str, *, insecure: bool = False,
                        thumbprint: Optional[str] = None,
                        ca_file: Optional[StrPath] = None) -> Provider:
    """:func:`vsphere` for asyncio."""
    return await connect_async("vsphere", url=url, user=user, password=password,
                               insecure=insecure, thumbprint=thumbprint, ca_file=ca_file)


def verify(path: StrPath, *, key_file: Optional[StrPath] = None,
           passphrase_file: Optional[StrPath] = None, strict: bool = True) -> PackageReport:
    """Checks a package (OVA, OVF directory, or an export's compressed or
    encrypted OVA; or an OVA published in an object store, by its URL:
    ``s3://bucket/x/vm.ova``) against its manifest. With ``strict`` (the
    default) a mismatch raises :class:`IntegrityError` naming every
    failure."""
    return PackageReport._of(json.loads(_native.verify(
        fspath(path),
        key_file=fspath(key_file) if key_file is not None else None,
        passphrase_file=fspath(passphrase_file) if passphrase_file is not None else None,
        strict=strict)))


async def verify_async(path: StrPath, **kwargs: Any) -> PackageReport:
    """:func:`verify` on a worker thread."""
    return await asyncio.get_running_loop().run_in_executor(None, lambda: verify(path, **kwargs))


def unwrap(input: StrPath, output: StrPath, *, key_file: Optional[StrPath] = None,
           passphrase_file: Optional[StrPath] = None, overwrite: bool = False) -> int:
    """Decrypts and decompresses a file an export wrapped (``vm.ova.zst.enc``
    → ``vm.ova``); ``output`` appears only when whole. Plain bytes written."""
    return _native.unwrap(fspath(input), fspath(output),
                          key_file=fspath(key_file) if key_file is not None else None,
                          passphrase_file=fspath(passphrase_file) if passphrase_file is not None else None,
                          overwrite=overwrite)
