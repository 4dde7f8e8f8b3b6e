//! Per-client request rate limits: a token bucket per API key (or
//! address, without keys).

use super::*;

impl AppState {
    /// Takes one request's token from `client`'s bucket; Err(seconds to
    /// wait) if there is none.
    pub(super) fn take_token(&self, client: &str) -> Result<(), u64> {
        let Some(limit) = &self.config.rate_limit else {
            return Ok(());
        };
        let now = Instant::now();
        let mut buckets = crate::lock(&self.buckets);
        if buckets.len() > 10_000 {
            // Forget clients idle for long enough to have a full bucket again.
            let full = std::time::Duration::from_secs_f64(limit.burst / limit.per_second.max(1e-9));
            buckets.retain(|_, (_, last)| now.duration_since(*last) < full);
        }
        let (tokens, last) = buckets
            .entry(client.to_string())
            .or_insert((limit.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * limit.per_second).min(limit.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / limit.per_second.max(1e-9))
                .ceil()
                .max(1.0) as u64)
        }
    }
}
