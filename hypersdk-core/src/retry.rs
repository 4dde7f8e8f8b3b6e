//! One retry policy for every provider and sink: exponential backoff with
//! jitter, bounded by a number of attempts and by the time spent, retrying
//! only what [`Error::is_retryable`] calls transient.
//!
//! ```
//! # async fn demo() -> hypersdk_core::Result<()> {
//! use hypersdk_core::retry::RetryPolicy;
//! let policy = RetryPolicy::default();
//! let answer = policy
//!     .run("fetching the inventory", |_attempt| async { Ok::<_, hypersdk_core::Error>(42) })
//!     .await?;
//! assert_eq!(answer, 42);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::error::{Error, Result};

/// When and how often to try again.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Tries in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// No retry starts once this much time has passed since the first try.
    pub max_elapsed: Duration,
    /// Delay before the first retry.
    pub initial_delay: Duration,
    /// Longest delay between tries.
    pub max_delay: Duration,
    /// Growth of the delay per retry.
    pub multiplier: f64,
    /// Fraction of each delay drawn at random (0: none, 1: anywhere from 0
    /// to the full delay), so that many clients do not retry in step.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// 6 tries over at most 5 minutes, 0.5 s doubling to 30 s, half jittered.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            max_elapsed: Duration::from_secs(300),
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

/// A small xorshift generator for jitter (not for anything secret).
fn random_unit(state: &mut u64) -> f64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

impl RetryPolicy {
    /// No retries at all.
    pub fn never() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        }
    }

    /// The delay after failed try `attempt` (1-based), with `unit` in [0, 1)
    /// choosing within the jitter: `base × (1 − jitter × unit)` where `base`
    /// grows from `initial_delay` by `multiplier`, capped at `max_delay`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let base = (self.initial_delay.as_secs_f64() * exp).min(self.max_delay.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        Duration::from_secs_f64(base * (1.0 - jitter * unit.clamp(0.0, 1.0)))
    }

    /// Runs `op` (given the attempt number, from 1) until it succeeds, fails
    /// with an error that is not retryable, or the policy's limits are
    /// reached; then returns the last error. `what` names the operation in
    /// the log line each retry writes.
    pub async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.run_cancellable(what, &CancellationToken::new(), op)
            .await
    }

    /// [`run`](Self::run), giving up with [`Error::Cancelled`] as soon as
    /// `cancel` fires (also during a backoff delay).
    pub async fn run_cancellable<T, F, Fut>(
        &self,
        what: &str,
        cancel: &CancellationToken,
        mut op: F,
    ) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let start = Instant::now();
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15)
            | 1;
        let mut attempt = 1u32;
        loop {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let result = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Error::Cancelled),
                r = op(attempt) => r,
            };
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let delay = self.delay(attempt, random_unit(&mut seed));
            if !err.is_retryable()
                || attempt >= self.max_attempts
                || start.elapsed() + delay > self.max_elapsed
            {
                return Err(err);
            }
            warn!(
                operation = what,
                attempt,
                retry_in_ms = delay.as_millis() as u64,
                error = %err,
                "transient failure; retrying"
            );
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Error::Cancelled),
                _ = tokio::time::sleep(delay) => {}
            }
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn transient() -> Error {
        Error::Provider {
            provider: "test".into(),
            message: "connection reset".into(),
            retryable: true,
            source: None,
        }
    }

    #[test]
    fn delays_grow_are_capped_and_jittered() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, 0.0), Duration::from_millis(500));
        assert_eq!(p.delay(2, 0.0), Duration::from_secs(1));
        assert_eq!(p.delay(4, 0.0), Duration::from_secs(4));
        assert_eq!(p.delay(20, 0.0), Duration::from_secs(30));
        assert_eq!(p.delay(2, 0.999_999).as_millis(), 500);
        let mut seed = 7;
        for _ in 0..1000 {
            let u = random_unit(&mut seed);
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_then_succeeds() {
        let tries = AtomicU32::new(0);
        let start = Instant::now();
        let v = RetryPolicy::default()
            .run("op", |attempt| {
                tries.fetch_add(1, Ordering::SeqCst);
                async move {
                    if attempt < 3 {
                        Err(transient())
                    } else {
                        Ok(attempt)
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(v, 3);
        assert_eq!(tries.load(Ordering::SeqCst), 3);
        // Two backoffs: 0.25..0.5 s and 0.5..1 s.
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(750) && waited <= Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_and_limits_stop_it() {
        let tries = AtomicU32::new(0);
        let err = RetryPolicy::default()
            .run("op", |_| {
                tries.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(Error::InvalidArgument("bad".into())) }
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
        assert_eq!(
            tries.load(Ordering::SeqCst),
            1,
            "no retry of a permanent error"
        );

        let tries = AtomicU32::new(0);
        let p = RetryPolicy {
            max_attempts: 4,
            ..Default::default()
        };
        let err = p
            .run("op", |_| {
                tries.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(transient()) }
            })
            .await
            .unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(tries.load(Ordering::SeqCst), 4);

        // The time limit: 10 s allows the 0.5 + 1 + 2 + 4 s backoffs, not 8 more.
        let tries = AtomicU32::new(0);
        let p = RetryPolicy {
            max_attempts: 100,
            max_elapsed: Duration::from_secs(10),
            jitter: 0.0,
            ..Default::default()
        };
        let _ = p
            .run("op", |_| {
                tries.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(transient()) }
            })
            .await;
        assert_eq!(tries.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_ends_a_backoff() {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.cancel();
        });
        let p = RetryPolicy {
            initial_delay: Duration::from_secs(60),
            max_delay: Duration::from_secs(60),
            ..Default::default()
        };
        let start = Instant::now();
        let err = p
            .run_cancellable("op", &cancel, |_| async { Err::<(), _>(transient()) })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Cancelled));
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
