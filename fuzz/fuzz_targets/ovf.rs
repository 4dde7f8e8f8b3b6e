//! Reads arbitrary text as an OVF descriptor (the model and its checked views); what
//! the model reads it must write back as a descriptor it can read again.
#![no_main]

use hypersdk_formats::ovf::model::{Envelope, OvfVersion};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Envelope::read(text);
    if let Ok(parsed) = Envelope::parse(text) {
        let again = Envelope::parse(&parsed.envelope.to_xml(OvfVersion::V1_0)).expect("rewritten descriptor parses");
        assert_eq!(again.envelope.systems.len(), parsed.envelope.systems.len());
    }
});
