//! The provider and export-source suite.

use futures_util::StreamExt;
use hypersdk_core::{
    CancellationToken, DiskStream, ExportOptions, ExportSource, Exporter, PackageFormat, Provider,
    Sink, VmQuery,
};
use hypersdk_sinks::MemorySink;
use sha2::{Digest, Sha256};

use crate::sink::read_all;

/// Runs every check of this module on `provider`, exporting `vm` (a VM
/// with at least one disk; keep it small: it is read several times).
pub async fn run_suite(provider: &dyn Provider, vm: &str) {
    list_search_and_get_agree(provider, vm).await;
    a_missing_vm_is_not_found(provider).await;
    let source = provider.open_export(vm).await.expect("open_export");
    let r = std::panic::AssertUnwindSafe(source_suite(source.as_ref()));
    let outcome = futures_util::FutureExt::catch_unwind(r).await;
    source
        .close_after(outcome.is_ok())
        .await
        .expect("close the export source");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    two_exports_are_identical(provider, vm).await;
    a_cancelled_export_leaves_nothing(provider, vm).await;
}

/// Every check on one export source (the caller closes it).
pub async fn source_suite(source: &dyn ExportSource) {
    for i in 0..source.spec().disks.len() {
        a_disk_stream_is_its_capacity_and_offsets_agree(source, i).await;
        a_served_disk_resumes_at_any_offset_and_decodes_to_the_guest_bytes(source, i).await;
        allocated_ranges_hold_every_nonzero_byte(source, i).await;
    }
}

/// `list_vms` has the VM; `vm_spec` describes the same VM; a search by
/// its exact name finds it (and only VMs that match); ids are unique.
pub async fn list_search_and_get_agree(provider: &dyn Provider, vm: &str) {
    let who = provider.name();
    let all = provider.list_vms().await.expect("list_vms");
    let mut ids: Vec<&str> = all.iter().map(|v| v.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "{who}: VM ids are not unique");
    let spec = provider.vm_spec(vm).await.expect("vm_spec");
    let listed = all.iter().find(|v| v.id == spec.id).unwrap_or_else(|| {
        panic!(
            "{who}: vm_spec({vm}) has id {} that list_vms lacks",
            spec.id
        )
    });
    assert_eq!(listed.name, spec.name, "{who}: name in list vs spec");
    assert_eq!(listed.cpus, spec.cpus, "{who}: CPUs in list vs spec");
    assert_eq!(
        listed.memory_mib, spec.memory_mib,
        "{who}: memory in list vs spec"
    );
    assert_eq!(
        listed.disks,
        spec.disks.len(),
        "{who}: disks in list vs spec"
    );
    assert_eq!(
        listed.total_capacity,
        spec.disks.iter().map(|d| d.capacity).sum::<u64>(),
        "{who}: capacity in list vs spec"
    );
    assert_eq!(
        provider.vm_spec(&spec.id).await.expect("vm_spec by id").id,
        spec.id,
        "{who}: by id"
    );
    let q = VmQuery {
        name: Some(spec.name.clone()),
        ..Default::default()
    };
    let found = provider.search_vms(&q).await.expect("search_vms");
    assert!(
        found.iter().any(|v| v.id == spec.id),
        "{who}: search by exact name misses the VM"
    );
    assert!(
        found.iter().all(|v| q.matches(v)),
        "{who}: search returned VMs that do not match"
    );
    let none = VmQuery {
        name: Some("hypersdk-testkit-no-such-vm".into()),
        ..Default::default()
    };
    assert!(
        provider.search_vms(&none).await.expect("search").is_empty(),
        "{who}: search found a missing VM"
    );
}

/// A VM that does not exist is `vm_not_found`, to describe and to export.
pub async fn a_missing_vm_is_not_found(provider: &dyn Provider) {
    let who = provider.name();
    let e = provider
        .vm_spec("hypersdk-testkit-no-such-vm")
        .await
        .expect_err("vm_spec of a missing VM");
    assert_eq!(e.code(), "vm_not_found", "{who}: {e}");
    assert!(
        e.to_string().contains("hypersdk-testkit-no-such-vm"),
        "{who}: the error names the VM: {e}"
    );
    let e = provider
        .open_export("hypersdk-testkit-no-such-vm")
        .await
        .expect_err("export of a missing VM");
    assert_eq!(e.code(), "vm_not_found", "{who}: {e}");
}

/// Hashes a stream; also the hash of the bytes from `mark` on, and the length.
async fn hash_stream(mut s: DiskStream, mark: u64) -> (String, String, u64) {
    let (mut all, mut tail, mut n) = (Sha256::new(), Sha256::new(), 0u64);
    while let Some(chunk) = s.next().await {
        let chunk = chunk.expect("read the disk stream");
        all.update(&chunk);
        let start = n;
        n += chunk.len() as u64;
        if n > mark {
            let from = mark.saturating_sub(start) as usize;
            tail.update(&chunk[from..]);
        }
    }
    (hex(all.finalize()), hex(tail.finalize()), n)
}

/// Disk `index` of `source` read whole: its SHA-256 (hex) and length.
pub async fn disk_sha256(source: &dyn ExportSource, index: usize) -> (String, u64) {
    let (all, _, n) = hash_stream(source.open_disk(index, 0).await.expect("open_disk"), 0).await;
    (all, n)
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Disk `index` streams exactly its capacity; opened at an offset it
/// gives the same bytes as the full stream from there, and at the end none.
pub async fn a_disk_stream_is_its_capacity_and_offsets_agree(
    source: &dyn ExportSource,
    index: usize,
) {
    let disk = &source.spec().disks[index];
    let what = format!("disk '{}' of VM '{}'", disk.name, source.spec().name);
    let mid = disk.capacity / 2 / 512 * 512;
    let (_, tail, n) = hash_stream(source.open_disk(index, 0).await.expect("open_disk"), mid).await;
    assert_eq!(
        n, disk.capacity,
        "{what}: the stream's length is not the capacity"
    );
    let (from_mid, _, m) = hash_stream(
        source
            .open_disk(index, mid)
            .await
            .expect("open_disk at an offset"),
        0,
    )
    .await;
    assert_eq!(m, disk.capacity - mid, "{what}: length from offset {mid}");
    assert_eq!(
        from_mid, tail,
        "{what}: bytes from offset {mid} differ from the full stream's"
    );
    let (_, _, e) = hash_stream(
        source
            .open_disk(index, disk.capacity)
            .await
            .expect("open_disk at the end"),
        0,
    )
    .await;
    assert_eq!(e, 0, "{what}: a stream opened at the end has bytes");
}

/// Where the platform serves a disk in an encoding of its own
/// ([`ExportSource::served_format`]), opening it at an offset gives the
/// rest of the same bytes (what a resumed download appends), and decoding
/// it gives the guest bytes `open_disk` gives.
pub async fn a_served_disk_resumes_at_any_offset_and_decodes_to_the_guest_bytes(
    source: &dyn ExportSource,
    index: usize,
) {
    let Some(format) = source.served_format(index) else {
        assert!(
            source
                .open_served(index, 0)
                .await
                .expect("open_served")
                .is_none(),
            "a source that names no served format serves one"
        );
        return; // this source serves guest bytes only (checked above)
    };
    let open = |offset| async move {
        source
            .open_served(index, offset)
            .await
            .expect("open_served")
            .unwrap_or_else(|| panic!("served_format is {format:?} but open_served gives nothing"))
    };
    let (_, _, len) = hash_stream(open(0).await, 0).await;
    let cut = len / 3 + 7; // deliberately unaligned
    let (_, tail, len2) = hash_stream(open(0).await, cut).await;
    assert_eq!(len, len2, "the served disk's length changed between reads");
    let (rest_hash, _, rest_len) = hash_stream(open(cut).await, 0).await;
    assert_eq!(
        (rest_len, rest_hash),
        (len - cut, tail),
        "the served disk from byte {cut} differs"
    );
    let spec = source.spec();
    let d = &spec.disks[index];
    let decoded = hypersdk_core::served::guest_bytes(
        format,
        open(0).await,
        d.capacity,
        (&spec.name, &d.name, &d.location),
    );
    let (decoded_hash, _, n) = hash_stream(decoded, 0).await;
    let (guest_hash, _, _) =
        hash_stream(source.open_disk(index, 0).await.expect("open_disk"), 0).await;
    assert_eq!(
        (n, decoded_hash),
        (d.capacity, guest_hash),
        "the served {format:?} decodes to other bytes than open_disk gives"
    );
}

/// Where a source reports a disk's allocated ranges, they are sorted,
/// disjoint and within the capacity, and every byte outside them is zero.
pub async fn allocated_ranges_hold_every_nonzero_byte(source: &dyn ExportSource, index: usize) {
    let Some(ranges) = source
        .allocated_ranges(index)
        .await
        .expect("allocated_ranges")
    else {
        return; // this source cannot tell
    };
    let d = &source.spec().disks[index];
    let what = format!("disk '{}' of VM '{}'", d.name, source.spec().name);
    let mut end = 0;
    for r in &ranges {
        assert!(
            r.start >= end && r.start < r.end && r.end <= d.capacity,
            "{what}: range {r:?} after {end} (capacity {})",
            d.capacity
        );
        end = r.end;
    }
    let mut s = source.open_disk(index, 0).await.expect("open_disk");
    let (mut pos, mut next) = (0u64, 0usize);
    while let Some(chunk) = s.next().await {
        let chunk = chunk.expect("read the disk stream");
        for (i, b) in chunk.iter().enumerate() {
            let at = pos + i as u64;
            while next < ranges.len() && ranges[next].end <= at {
                next += 1;
            }
            let inside = next < ranges.len() && ranges[next].start <= at;
            assert!(
                inside || *b == 0,
                "{what}: byte {at} is not zero but lies outside every allocated range"
            );
        }
        pos += chunk.len() as u64;
    }
}

fn options() -> ExportOptions {
    let mut o = ExportOptions::new(PackageFormat::Ovf).with_verify(true);
    o.checkpoint = false;
    o
}

/// Two exports of the same VM give packages identical byte for byte.
pub async fn two_exports_are_identical(provider: &dyn Provider, vm: &str) {
    let who = provider.name();
    let (a, b) = (MemorySink::new(), MemorySink::new());
    let ra = Exporter::new(options())
        .export(provider, vm, &a)
        .await
        .expect("first export");
    let rb = Exporter::new(options())
        .export(provider, vm, &b)
        .await
        .expect("second export");
    assert!(
        ra.verified && rb.verified,
        "{who}: the verify pass did not run"
    );
    assert_eq!(
        ra.manifest, rb.manifest,
        "{who}: two exports of '{vm}' have different manifests"
    );
    let (la, lb) = (
        a.list("").await.expect("list"),
        b.list("").await.expect("list"),
    );
    assert_eq!(la, lb, "{who}: two exports of '{vm}' have different files");
    assert!(!la.is_empty(), "{who}: the export published nothing");
    for o in &la {
        assert_eq!(
            read_all(&a, &o.path).await,
            read_all(&b, &o.path).await,
            "{who}: {} differs",
            o.path
        );
    }
}

/// An export cancelled before it starts fails with `cancelled` and
/// publishes nothing.
pub async fn a_cancelled_export_leaves_nothing(provider: &dyn Provider, vm: &str) {
    let who = provider.name();
    let sink = MemorySink::new();
    let token = CancellationToken::new();
    token.cancel();
    let e = Exporter::new(options())
        .with_cancel(token)
        .export(provider, vm, &sink)
        .await
        .expect_err("a cancelled export");
    assert_eq!(e.code(), "cancelled", "{who}: {e}");
    assert!(
        sink.list("").await.expect("list").is_empty(),
        "{who}: a cancelled export published files"
    );
}

/// An OVA export of `vm` into `sink`, cancelled once more than `after`
/// bytes are read, fails with `cancelled` and publishes nothing. (The
/// caller then checks its peer: what the export took there — snapshots,
/// access grants — must be released.)
pub async fn an_export_cancelled_while_reading_leaves_nothing(
    provider: &dyn Provider,
    vm: &str,
    after: u64,
    sink: &dyn Sink,
) {
    let who = provider.name();
    let cancel = CancellationToken::new();
    let on = cancel.clone();
    let e = Exporter::new(ExportOptions::new(PackageFormat::Ova))
        .with_cancel(cancel)
        .on_progress(std::sync::Arc::new(move |e| {
            if e.bytes_done > after {
                on.cancel();
            }
        }))
        .export(provider, vm, sink)
        .await
        .expect_err("a cancelled export");
    assert_eq!(e.code(), "cancelled", "{who}: {e}");
    assert!(
        sink.list("").await.expect("list").is_empty(),
        "{who}: a cancelled export published files"
    );
}
