//! Lists an OVA and reads its members: hostile archives must be refused, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut ova) = hypersdk_formats::ova::OvaReader::open(std::io::Cursor::new(data)) else { return };
    let names: Vec<String> = ova.entries().iter().map(|e| e.name.clone()).collect();
    for n in &names {
        assert!(hypersdk_formats::ova::safe_member_name(n).is_ok());
        let _ = ova.read_small(n, 1 << 20);
        let _ = ova.copy_member(n, &mut std::io::sink());
    }
});
