//! The sink testkit over both sinks of this crate.

use hypersdk_sinks::{LocalDirSink, MemorySink};
use hypersdk_testkit::sink::{run_suite, Capabilities};

#[tokio::test]
async fn local_dir_sink_passes_the_sink_testkit() {
    let dir = tempfile::tempdir().unwrap();
    let sink = LocalDirSink::new(dir.path().join("out"));
    run_suite(&sink, Capabilities::LOCAL).await;
    // Nothing but what the suite left published (it deletes its artifacts).
    let left: Vec<_> = std::fs::read_dir(dir.path().join("out")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn memory_sink_passes_the_sink_testkit() {
    let sink = MemorySink::new();
    run_suite(&sink, Capabilities::LOCAL).await;
}
