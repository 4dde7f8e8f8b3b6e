//! Behaviour that wraps a disk stream, the way OpenDAL stacks layers on a
//! service and object_store wraps a store in `ThrottledStore`: each is a
//! function from a [`DiskStream`] to a [`DiskStream`], usable on any
//! source's streams, and the Exporter applies them in one place instead of
//! in each of its read loops.
//!
//! - [`throttled`]: every chunk waits for its bytes from each limiter (an
//!   export's own `--bwlimit`, and the ones its caller shares between
//!   exports — the daemon's and the CLI's; there is no process-wide one).
//! - [`idle_timeout`]: a source that sends nothing for a while fails with a
//!   retryable [`Error::DiskRead`] instead of being waited on forever.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use futures_util::StreamExt;
//! use hypersdk_core::layers::{idle_timeout, throttled};
//! use hypersdk_core::transforms::ratelimit::RateLimiter;
//!
//! let chunks = vec![Ok(bytes::Bytes::from_static(b"guest bytes"))];
//! let stream: hypersdk_core::DiskStream = Box::pin(futures_util::stream::iter(chunks));
//! let limited = throttled(stream, vec![RateLimiter::from_spec("10M").unwrap()]);
//! let mut guarded = idle_timeout(limited, std::time::Duration::from_secs(5), ("vm", "disk", "here"));
//! assert_eq!(&guarded.next().await.unwrap().unwrap()[..], b"guest bytes");
//! # });
//! ```

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::provider::DiskStream;
use crate::transforms::ratelimit::RateLimiter;
use crate::Error;

/// `stream` with each chunk taken from every limiter in `limiters` before
/// it is handed on.
pub fn throttled(stream: DiskStream, limiters: Vec<Arc<RateLimiter>>) -> DiskStream {
    if limiters.is_empty() {
        return stream;
    }
    let limiters = Arc::new(limiters);
    Box::pin(stream.then(move |item| {
        let limiters = limiters.clone();
        async move {
            if let Ok(b) = &item {
                for l in limiters.iter() {
                    l.acquire(b.len() as u64).await;
                }
            }
            item
        }
    }))
}

/// `stream`, failing with a retryable [`Error::DiskRead`] of disk
/// `(vm, disk, location)` if it sends nothing for `limit` (and ending there).
pub fn idle_timeout(stream: DiskStream, limit: Duration, of: (&str, &str, &str)) -> DiskStream {
    let (vm, disk, location) = (of.0.to_string(), of.1.to_string(), of.2.to_string());
    Box::pin(futures_util::stream::unfold(Some(stream), move |state| {
        let (vm, disk, location) = (vm.clone(), disk.clone(), location.clone());
        async move {
            let mut s = state?;
            match tokio::time::timeout(limit, s.next()).await {
                Ok(Some(item)) => Some((item, Some(s))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(Error::DiskRead {
                        vm,
                        disk,
                        location,
                        source: Box::new(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "the source sent nothing for {:.1} s (stalled)",
                                limit.as_secs_f64()
                            ),
                        )),
                    }),
                    None,
                )),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_source_fails_retryably_and_ends() {
        let stalled: DiskStream = Box::pin(
            futures_util::stream::iter(vec![Ok(Bytes::from_static(b"x"))])
                .chain(futures_util::stream::pending()),
        );
        let mut s = idle_timeout(stalled, Duration::from_secs(3), ("vm", "vda", "/d"));
        assert_eq!(&s.next().await.unwrap().unwrap()[..], b"x");
        let e = s.next().await.unwrap().unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(e.to_string().contains("vda"), "{e}");
        assert!(s.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn every_limiter_is_waited_on() {
        let chunks: Vec<crate::Result<Bytes>> = (0..4)
            .map(|_| Ok(Bytes::from(vec![0u8; 1 << 20])))
            .collect();
        let s: DiskStream = Box::pin(futures_util::stream::iter(chunks));
        let slow = RateLimiter::from_spec("1M").unwrap();
        let fast = RateLimiter::from_spec("100M").unwrap();
        let start = tokio::time::Instant::now();
        let n = throttled(s, vec![fast, slow]).count().await;
        assert_eq!(n, 4);
        // 4 MiB at 1 MiB/s, less the burst: the slower limiter sets the pace.
        assert!(
            start.elapsed() >= Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }
}
