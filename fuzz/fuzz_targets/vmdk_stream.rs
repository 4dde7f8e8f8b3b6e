//! Feeds bytes to the one-pass streamOptimized readers: the structure checker
//! (in chunks cut where the first byte says) and the decoder (at most 8 MiB of
//! guest bytes). Neither may panic; the decoder never returns more than the
//! capacity it announced.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1) * 7;
    let mut checker = hypersdk_formats::vmdk::StreamChecker::new();
    let mut ok = true;
    for part in data.chunks(step) {
        if checker.push(part).is_err() {
            ok = false;
            break;
        }
    }
    if ok {
        let _ = checker.finish();
    }
    if let Ok(mut dec) = hypersdk_formats::vmdk::StreamDecoder::new(data) {
        let capacity = dec.capacity();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        while total < 8 << 20 {
            match dec.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        assert!(total <= capacity);
    }
});
