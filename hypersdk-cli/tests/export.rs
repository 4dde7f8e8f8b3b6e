//! End-to-end tests of `hyperctl`: export the bundled example VM and judge the
//! result with the real tools (tar, qemu-img); break things and check that
//! each failure is one clear line and leaves nothing that looks finished.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use hypersdk_testsupport::{
    assert_image_ok, assert_same_guest_data, path_str, run_tool, workspace_root,
};
use quick_xml::events::Event;

fn example_xml() -> PathBuf {
    workspace_root().join("examples/vms/demo-vm.xml")
}

fn example_disk(name: &str) -> PathBuf {
    workspace_root().join("examples/vms/disks").join(name)
}

/// Checks every manifest line against the files of `dir`, and that the
/// manifest covers every file but itself.
fn check_manifest(dir: &Path, mf: &str) {
    let text = fs::read_to_string(dir.join(mf)).unwrap();
    let entries = hypersdk_formats::manifest::parse_manifest(&text).unwrap();
    for line in text.lines() {
        assert!(
            line.starts_with("SHA256(") && line.contains(")= "),
            "strict manifest line: {line}"
        );
    }
    for (algo, name, hex) in &entries {
        assert_eq!(algo, "SHA256");
        assert_eq!(&sha256_hex(&dir.join(name)), hex, "digest of {name}");
    }
    let mut covered: Vec<String> = entries.iter().map(|e| e.1.clone()).collect();
    covered.push(mf.to_string());
    covered.sort();
    assert_eq!(covered, listing(dir));
}

/// Parses the OVF and returns (rasd fields per Item, Disk attributes, Network names).
#[allow(clippy::type_complexity)]
fn parse_ovf(
    path: &Path,
) -> (
    Vec<HashMap<String, String>>,
    Vec<HashMap<String, String>>,
    Vec<String>,
) {
    let text = fs::read_to_string(path).unwrap();
    let mut reader = quick_xml::Reader::from_str(&text);
    let (mut items, mut disks, mut networks) = (Vec::new(), Vec::new(), Vec::new());
    let mut current: Option<HashMap<String, String>> = None;
    let mut field: Option<String> = None;
    let mut depth = 0i32;
    let attrs = |e: &quick_xml::events::BytesStart| -> HashMap<String, String> {
        e.attributes()
            .map(|a| {
                let a = a.unwrap();
                (
                    String::from_utf8_lossy(a.key.as_ref()).into_owned(),
                    a.unescape_value().unwrap().into_owned(),
                )
            })
            .collect()
    };
    loop {
        match reader.read_event().expect("OVF is well-formed XML") {
            Event::Start(e) => {
                depth += 1;
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                match name.as_str() {
                    "Item" => current = Some(HashMap::new()),
                    "Network" => networks.push(attrs(&e)["ovf:name"].clone()),
                    n if n.starts_with("rasd:") => field = Some(n[5..].to_string()),
                    _ => {}
                }
            }
            Event::Empty(e) if e.name().as_ref() == b"Disk" => disks.push(attrs(&e)),
            Event::Text(t) => {
                if let (Some(item), Some(f)) = (current.as_mut(), field.as_ref()) {
                    item.insert(f.clone(), String::from_utf8_lossy(&t).into_owned());
                }
            }
            Event::End(e) => {
                depth -= 1;
                if e.name().as_ref() == b"Item" {
                    items.push(current.take().unwrap());
                }
                field = None;
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(depth, 0, "balanced elements");
    (items, disks, networks)
}

fn check_ovf_declares_example_vm(ovf: &Path) {
    let (items, disks, networks) = parse_ovf(ovf);
    let by_type = |t: &str| {
        items
            .iter()
            .filter(|i| i.get("ResourceType").map(String::as_str) == Some(t))
            .collect::<Vec<_>>()
    };
    assert_eq!(by_type("3")[0]["VirtualQuantity"], "2", "CPUs");
    assert_eq!(by_type("4")[0]["VirtualQuantity"], "1024", "memory MiB");
    assert_eq!(by_type("17").len(), 2, "two disks");
    let nics = by_type("10");
    assert_eq!(nics.len(), 2, "two NICs");
    assert_eq!(nics[0]["Address"], "52:54:00:6b:3c:01");
    assert_eq!(nics[0]["Connection"], "default");
    assert_eq!(nics[1]["Connection"], "br-storage");
    assert_eq!(networks, vec!["default", "br-storage"]);
    let caps: Vec<&str> = disks.iter().map(|d| d["ovf:capacity"].as_str()).collect();
    assert_eq!(caps, vec!["67108864", "4194304"]);
}

#[test]
fn exports_example_vm_to_a_verified_ova() {
    let out = tempfile::tempdir().unwrap();
    let json = ok(&[
        "export",
        path_str(&example_xml()),
        "--provider",
        "local",
        "--format",
        "ova",
        "--output",
        path_str(out.path()),
        "--verify",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["verified"], true);
    let ova = out.path().join("demo-vm.ova");
    assert_eq!(report["location"], path_str(&ova));
    assert_eq!(
        listing(out.path()),
        vec!["demo-vm.ova"],
        "only the finished OVA remains"
    );
    assert_eq!(
        report["size"].as_u64().unwrap(),
        fs::metadata(&ova).unwrap().len()
    );
    assert_eq!(report["ova"]["digest"].as_str().unwrap(), sha256_hex(&ova));

    let members = run_tool("tar", &["-tf", path_str(&ova)]);
    let members: Vec<&str> = members.lines().collect();
    assert_eq!(
        members,
        vec![
            "demo-vm.ovf",
            "demo-vm.mf",
            "demo-vm-disk1.vmdk",
            "demo-vm-disk2.vmdk"
        ]
    );

    let x = tempfile::tempdir().unwrap();
    run_tool("tar", &["-xf", path_str(&ova), "-C", path_str(x.path())]);
    check_manifest(x.path(), "demo-vm.mf");
    assert_eq!(
        report["manifest"].as_str().unwrap(),
        fs::read_to_string(x.path().join("demo-vm.mf")).unwrap()
    );
    for (vmdk, src, fmt) in [
        ("demo-vm-disk1.vmdk", "demo-root.qcow2", "qcow2"),
        ("demo-vm-disk2.vmdk", "demo-data.raw", "raw"),
    ] {
        let vmdk = x.path().join(vmdk);
        assert_image_ok(&vmdk);
        let info = run_tool("qemu-img", &["info", "--output=json", path_str(&vmdk)]);
        assert!(info.contains("streamOptimized"), "{info}");
        assert_same_guest_data(&example_disk(src), Some(fmt), &vmdk, Some("vmdk"));
    }
    check_ovf_declares_example_vm(&x.path().join("demo-vm.ovf"));
}

#[test]
fn exports_example_vm_to_an_ovf_directory_by_name() {
    let out = tempfile::tempdir().unwrap();
    let vms_dir = workspace_root().join("examples/vms");
    let args = [
        "export",
        "demo-vm",
        "--dir",
        path_str(&vms_dir),
        "--format",
        "ovf",
        "--output",
        path_str(out.path()),
    ];
    let stdout = ok(&args);
    assert!(stdout.contains("SHA256(demo-vm.ovf)= "), "{stdout}");
    assert_eq!(listing(out.path()), vec!["demo-vm"]);
    let dir = out.path().join("demo-vm");
    check_manifest(&dir, "demo-vm.mf");
    assert_same_guest_data(
        &example_disk("demo-root.qcow2"),
        Some("qcow2"),
        &dir.join("demo-vm-disk1.vmdk"),
        Some("vmdk"),
    );
    check_ovf_declares_example_vm(&dir.join("demo-vm.ovf"));

    // A second export of the same name is refused, then allowed with --overwrite.
    let line = fails(&args);
    assert!(line.contains("already exists"), "{line}");
    ok(&[&args[..], &["--overwrite"]].concat());
    assert_eq!(listing(out.path()), vec!["demo-vm"]);
}

#[test]
fn vms_list_show_and_search() {
    let dir = workspace_root().join("examples/vms");
    let list = ok(&["vms", "list", "--dir", path_str(&dir)]);
    assert!(
        list.contains("demo-vm") && list.contains("debian 12"),
        "{list}"
    );
    let show: serde_json::Value = serde_json::from_str(&ok(&[
        "vms",
        "show",
        "demo-vm",
        "--dir",
        path_str(&dir),
        "--json",
    ]))
    .unwrap();
    assert_eq!(show["cpus"], 2);
    assert_eq!(show["memory_mib"], 1024);
    assert_eq!(show["disks"][0]["capacity"], 67108864);
    assert_eq!(show["disks"][1]["controller"], "sata");
    assert_eq!(show["nics"][1]["model"], "e1000e");
    let hit: serde_json::Value = serde_json::from_str(&ok(&[
        "vms",
        "search",
        "--name",
        "DEMO-*",
        "--min-cpus",
        "2",
        "--dir",
        path_str(&dir),
        "--json",
    ]))
    .unwrap();
    assert_eq!(hit.as_array().unwrap().len(), 1);
    let miss: serde_json::Value = serde_json::from_str(&ok(&[
        "vms",
        "search",
        "--min-memory",
        "4096",
        "--dir",
        path_str(&dir),
        "--json",
    ]))
    .unwrap();
    assert_eq!(miss.as_array().unwrap().len(), 0);
}

/// A domain XML in `dir` whose single disk is `disk` (format `fmt`).
fn domain_with_disk(dir: &Path, disk: &Path, fmt: &str) -> PathBuf {
    let xml = dir.join("broken.xml");
    fs::write(
        &xml,
        hypersdk_testsupport::domain_xml("broken", &[(disk, fmt)]),
    )
    .unwrap();
    xml
}

fn export_fails(xml: &Path, out: &Path) -> String {
    let line = fails(&["export", path_str(xml), "--output", path_str(out)]);
    assert!(
        listing(out).is_empty(),
        "nothing may be left in {}: {:?}",
        out.display(),
        listing(out)
    );
    line
}

#[test]
fn missing_vm_is_one_clear_line() {
    let out = tempfile::tempdir().unwrap();
    let dir = workspace_root().join("examples/vms");
    let line = fails(&[
        "export",
        "no-such-vm",
        "--dir",
        path_str(&dir),
        "--output",
        path_str(out.path()),
    ]);
    assert!(
        line.contains("VM 'no-such-vm' not found") && line.contains("examples/vms"),
        "{line}"
    );
    let line = fails(&[
        "export",
        "/nonexistent/vm.xml",
        "--output",
        path_str(out.path()),
    ]);
    assert!(
        line.contains("/nonexistent/vm.xml") && line.contains("not found"),
        "{line}"
    );
    assert!(listing(out.path()).is_empty());
}

#[test]
fn unreadable_disks_are_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let missing = tmp.path().join("missing.qcow2");
    let line = export_fails(&domain_with_disk(tmp.path(), &missing, "qcow2"), &out);
    assert!(
        line.contains("cannot read disk 'vda'")
            && line.contains("missing.qcow2")
            && line.contains("No such file"),
        "{line}"
    );
    // A directory where the image should be: opening works, reading does not.
    let dir_disk = tmp.path().join("a-directory.raw");
    fs::create_dir(&dir_disk).unwrap();
    let line = export_fails(&domain_with_disk(tmp.path(), &dir_disk, "raw"), &out);
    assert!(
        line.contains("cannot read disk 'vda'") && line.contains("a-directory.raw"),
        "{line}"
    );
}

#[test]
fn unwritable_output_is_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    let line = fails(&[
        "export",
        path_str(&example_xml()),
        "--output",
        path_str(&file),
    ]);
    assert!(line.contains("not-a-dir"), "{line}");
    assert_eq!(fs::read(&file).unwrap(), b"x");
    let below = file.join("sub");
    let line = fails(&[
        "export",
        path_str(&example_xml()),
        "--output",
        path_str(&below),
    ]);
    assert!(
        line.contains("not-a-dir/sub") && line.contains("Not a directory"),
        "{line}"
    );
}

/// Offset of the L2 table that maps guest cluster 0 in a qcow2 file.
fn first_l2_table(img: &[u8]) -> usize {
    let be64 = |at: usize| u64::from_be_bytes(img[at..at + 8].try_into().unwrap());
    let l1 = be64(40) as usize;
    (be64(l1) & 0x00ff_ffff_ffff_fe00) as usize
}

#[test]
fn corrupted_qcow2_is_one_clear_line_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let good = fs::read(example_disk("demo-root.qcow2")).unwrap();
    let img = tmp.path().join("bad.qcow2");
    let xml = domain_with_disk(tmp.path(), &img, "qcow2");

    // Bad magic: caught when the VM is opened.
    let mut bad = good.clone();
    bad[..4].copy_from_slice(b"QFIX");
    fs::write(&img, &bad).unwrap();
    let line = export_fails(&xml, &out);
    assert!(
        line.contains("cannot read disk 'vda'")
            && line.contains("corrupt qcow2")
            && line.contains("magic"),
        "{line}"
    );

    // The data cluster at 20 MiB points past the end of the file: caught mid-export,
    // after 20 MiB went through the pipeline.
    let mut bad = good.clone();
    let entry = first_l2_table(&bad) + (20 << 20) / 65536 * 8;
    bad[entry..entry + 8].copy_from_slice(&(0x8000_0000_0000_0000u64 | (1u64 << 40)).to_be_bytes());
    fs::write(&img, &bad).unwrap();
    let line = export_fails(&xml, &out);
    assert!(
        line.contains("corrupt qcow2") && line.contains("past the end"),
        "{line}"
    );

    // Truncated image: the L1 table is gone.
    fs::write(&img, &good[..4096]).unwrap();
    let line = export_fails(&xml, &out);
    assert!(line.contains("corrupt qcow2"), "{line}");
}

#[test]
fn malformed_domain_xml_is_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let xml = tmp.path().join("vm.xml");
    fs::write(&xml, "<domain><name>x</name><memory>1</memory><devices>").unwrap();
    let line = fails(&[
        "export",
        path_str(&xml),
        "--output",
        path_str(&tmp.path().join("out")),
    ]);
    assert!(
        line.contains("bad domain XML") && line.contains("vm.xml"),
        "{line}"
    );
}
