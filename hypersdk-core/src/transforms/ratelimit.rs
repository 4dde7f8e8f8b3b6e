//! Bandwidth limits: a byte token bucket and rclone-style timetables.
//!
//! A [`RateLimiter`] holds a bucket of `burst` bytes that refills at the
//! current rate. [`acquire(n)`](RateLimiter::acquire) takes `n` bytes at once,
//! going into debt if the bucket holds fewer, and then waits until the debt
//! is paid, so a chunk larger than the burst still passes and the long-run
//! average is exactly the rate. While waiting it looks at the rate again at
//! least every 250 ms, so a new rate (by [`set_rate`](RateLimiter::set_rate)
//! or by the timetable) takes effect within a second, even in the middle of a
//! long wait.
//!
//! An export waits on its own limiter and on every limiter its caller shares
//! between exports (`ExportOptions::shared_limiters`, e.g. the daemon's
//! `bwlimit` over all jobs), so the lowest wins; the waiting is the
//! [`throttled`](crate::layers::throttled) layer. There is no process-wide
//! limiter: two daemons or libraries in one process do not share one by
//! accident.
//!
//! # Timetables
//!
//! [`BwSchedule`] parses the syntax of rclone's `--bwlimit`: either one rate
//! (`10M`, `off`) or space-separated `[DAY-]HH:MM,RATE` entries, e.g.
//! `"08:00,512K 18:00,10M 23:00,off"` or `"Mon-08:00,10M Sat-00:00,off"`. An
//! entry without a day applies every day. The rate at a moment is that of the
//! latest entry at or before it in the week (local time), wrapping around
//! from the last entry of the week. Rates are bytes per second with binary
//! suffixes `B`, `K`, `M`, `G`, `T` (KiB, MiB, … per second); a bare number
//! is KiB/s, as in rclone; `off` is unlimited.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};

/// The longest a waiter sleeps before looking at the rate again.
const RECHECK: Duration = Duration::from_millis(250);

/// A byte token bucket whose rate may change while it is used.
#[derive(Debug)]
pub struct RateLimiter {
    state: Mutex<Bucket>,
    schedule: Option<BwSchedule>,
}

#[derive(Debug)]
struct Bucket {
    /// Bytes per second; None is unlimited.
    rate: Option<u64>,
    /// Largest number of tokens the bucket holds (at least 4 KiB).
    burst: f64,
    /// Tokens now; negative is debt.
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        match self.rate {
            Some(r) => self.tokens = (self.tokens + r as f64 * dt).min(self.burst),
            None => self.tokens = self.burst,
        }
    }
}

impl RateLimiter {
    /// A limiter at `rate` bytes per second (None: unlimited) with a bucket
    /// of `burst` bytes (at least 4 KiB; a common choice is 1/10 s of rate).
    pub fn new(rate: Option<u64>, burst: u64) -> Arc<Self> {
        Arc::new(RateLimiter {
            state: Mutex::new(Bucket {
                rate: rate.filter(|r| *r > 0),
                burst: burst.max(4096) as f64,
                tokens: burst.max(4096) as f64,
                last: Instant::now(),
            }),
            schedule: None,
        })
    }

    /// A limiter that follows `schedule` (local time), with a bucket of
    /// `burst` bytes.
    pub fn with_schedule(schedule: BwSchedule, burst: u64) -> Arc<Self> {
        let rate = schedule.rate_now();
        Arc::new(RateLimiter {
            state: Mutex::new(Bucket {
                rate,
                burst: burst.max(4096) as f64,
                tokens: burst.max(4096) as f64,
                last: Instant::now(),
            }),
            schedule: Some(schedule),
        })
    }

    /// A limiter for a `--bwlimit` value: one rate or a timetable. The burst
    /// is 1/10 s at the highest rate it names, at least 64 KiB.
    pub fn from_spec(spec: &str) -> Result<Arc<Self>> {
        let schedule: BwSchedule = spec.parse()?;
        let burst = (schedule.max_rate().unwrap_or(0) / 10).max(64 * 1024);
        Ok(match schedule.constant() {
            Some(rate) => Self::new(rate, burst),
            None => Self::with_schedule(schedule, burst),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        // A panic while holding the lock leaves a consistent bucket.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the rate (None: unlimited). Waiters see it within 250 ms. (A
    /// limiter with a timetable keeps following its timetable instead.)
    pub fn set_rate(&self, rate: Option<u64>) {
        let mut b = self.lock();
        b.refill(Instant::now());
        b.rate = rate.filter(|r| *r > 0);
    }

    /// The current rate in bytes per second (None: unlimited).
    pub fn rate(&self) -> Option<u64> {
        self.lock().rate
    }

    /// Whether this limiter limits at all now.
    pub fn is_limited(&self) -> bool {
        self.schedule.is_some() || self.lock().rate.is_some()
    }

    /// Follows the timetable, if any, to its rate for now.
    fn follow_schedule(&self, b: &mut Bucket) {
        if let Some(s) = &self.schedule {
            let rate = s.rate_now();
            if rate != b.rate {
                b.rate = rate;
            }
        }
    }

    /// Takes `n` bytes from the bucket and waits until they are paid for.
    pub async fn acquire(&self, n: u64) {
        {
            let mut b = self.lock();
            let now = Instant::now();
            b.refill(now);
            self.follow_schedule(&mut b);
            if b.rate.is_none() {
                return;
            }
            b.tokens -= n as f64;
        }
        loop {
            let wait = {
                let mut b = self.lock();
                b.refill(Instant::now());
                self.follow_schedule(&mut b);
                match b.rate {
                    None => return, // unlimited now: the debt is forgiven
                    Some(_) if b.tokens >= 0.0 => return,
                    Some(r) => Duration::from_secs_f64(-b.tokens / r as f64),
                }
            };
            tokio::time::sleep(wait.min(RECHECK)).await;
        }
    }
}

/// Minutes in a week.
const WEEK: u32 = 7 * 24 * 60;

/// An rclone-style bandwidth timetable (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BwSchedule {
    /// (minute of the week from Monday 00:00, rate), sorted by minute.
    entries: Vec<(u32, Option<u64>)>,
}

impl BwSchedule {
    /// The rate at `minute` of the week (0 = Monday 00:00).
    pub fn rate_at(&self, minute: u32) -> Option<u64> {
        let minute = minute % WEEK;
        match self.entries.iter().rev().find(|(m, _)| *m <= minute) {
            Some((_, r)) => *r,
            // Before the week's first entry: the last one still holds.
            None => self.entries.last().and_then(|(_, r)| *r),
        }
    }

    /// The rate now, in local time.
    pub fn rate_now(&self) -> Option<u64> {
        use chrono::{Datelike, Timelike};
        let now = chrono::Local::now();
        let minute =
            now.weekday().num_days_from_monday() * 24 * 60 + now.hour() * 60 + now.minute();
        self.rate_at(minute)
    }

    /// The one rate of a timetable that never changes.
    pub fn constant(&self) -> Option<Option<u64>> {
        let first = self.entries.first()?.1;
        self.entries
            .iter()
            .all(|(_, r)| *r == first)
            .then_some(first)
    }

    /// The highest rate named (None if every entry is `off`).
    pub fn max_rate(&self) -> Option<u64> {
        self.entries.iter().filter_map(|(_, r)| *r).max()
    }
}

/// Parses a rate: `off`, or a number with an optional binary suffix
/// (`B`, `K`, `M`, `G`, `T`; none means KiB/s, as in rclone).
pub fn parse_rate(s: &str) -> Result<Option<u64>> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") || s.is_empty() {
        return Ok(None);
    }
    let bad = || Error::InvalidArgument(format!("bad bandwidth '{s}' (e.g. 10M, 512K, off)"));
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'B' => 1,
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(bad()),
            };
            (&s[..i], m)
        }
        _ => (s, 1 << 10),
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    if !(v.is_finite() && v > 0.0) {
        return Err(bad());
    }
    Ok(Some(((v * mult as f64) as u64).max(1)))
}

fn parse_day(s: &str) -> Option<u32> {
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let l = s.to_ascii_lowercase();
    DAYS.iter()
        .position(|d| l.len() >= 3 && d.starts_with(&l[..3]) && l.len() <= 9)
        .map(|p| p as u32)
}

impl std::str::FromStr for BwSchedule {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let parts: Vec<&str> = spec.split_whitespace().collect();
        if parts.is_empty() {
            return Err(Error::InvalidArgument("empty bandwidth limit".into()));
        }
        if parts.len() == 1 && !parts[0].contains(',') {
            return Ok(BwSchedule {
                entries: vec![(0, parse_rate(parts[0])?)],
            });
        }
        let mut entries = Vec::new();
        for part in parts {
            let bad = |why: &str| {
                Error::InvalidArgument(format!(
                    "bad timetable entry '{part}': {why} (expected [DAY-]HH:MM,RATE)"
                ))
            };
            let (when, rate) = part.split_once(',').ok_or_else(|| bad("no comma"))?;
            let rate = parse_rate(rate)?;
            let (day, time) = match when.split_once('-') {
                Some((d, t)) => (Some(parse_day(d).ok_or_else(|| bad("unknown day"))?), t),
                None => (None, when),
            };
            let (h, m) = time.split_once(':').ok_or_else(|| bad("no HH:MM"))?;
            let h: u32 = h.parse().map_err(|_| bad("bad hour"))?;
            let m: u32 = m.parse().map_err(|_| bad("bad minute"))?;
            if h > 23 || m > 59 {
                return Err(bad("time out of range"));
            }
            let minute = h * 60 + m;
            match day {
                Some(d) => entries.push((d * 24 * 60 + minute, rate)),
                None => entries.extend((0..7).map(|d| (d * 24 * 60 + minute, rate))),
            }
        }
        entries.sort_by_key(|(m, _)| *m);
        // A later entry for the same minute replaces an earlier one.
        entries.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                earlier.1 = later.1;
                true
            } else {
                false
            }
        });
        Ok(BwSchedule { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn rates_parse_like_rclone() {
        assert_eq!(parse_rate("off").unwrap(), None);
        assert_eq!(parse_rate("10M").unwrap(), Some(10 * MIB));
        assert_eq!(parse_rate("512k").unwrap(), Some(512 * 1024));
        assert_eq!(parse_rate("1.5G").unwrap(), Some(3 * (1 << 29)));
        assert_eq!(parse_rate("100").unwrap(), Some(100 * 1024));
        assert_eq!(parse_rate("100B").unwrap(), Some(100));
        for bad in ["x", "10Q", "-5M", "0", "M"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timetable_picks_the_latest_entry_and_wraps() {
        let s: BwSchedule = "08:00,512K 18:00,10M 23:00,off".parse().unwrap();
        let at = |day: u32, h: u32, m: u32| s.rate_at(day * 1440 + h * 60 + m);
        assert_eq!(at(0, 7, 59), None); // Monday early: Sunday 23:00 off holds
        assert_eq!(at(0, 8, 0), Some(512 * 1024));
        assert_eq!(at(2, 17, 59), Some(512 * 1024));
        assert_eq!(at(2, 18, 0), Some(10 * MIB));
        assert_eq!(at(6, 23, 30), None);

        let s: BwSchedule = "Mon-08:00,10M Sat-00:00,off".parse().unwrap();
        assert_eq!(s.rate_at(0), None); // Monday 00:00: still the weekend's off
        assert_eq!(s.rate_at(8 * 60), Some(10 * MIB));
        assert_eq!(s.rate_at(4 * 1440 + 23 * 60), Some(10 * MIB)); // Friday night
        assert_eq!(s.rate_at(5 * 1440), None);
        assert_eq!(s.max_rate(), Some(10 * MIB));
        assert_eq!(s.constant(), None);

        let c: BwSchedule = "10M".parse().unwrap();
        assert_eq!(c.constant(), Some(Some(10 * MIB)));
        for bad in [
            "",
            "25:00,1M",
            "Xyz-08:00,1M",
            "08:00",
            "08:00,fast",
            "8h,1M",
        ] {
            assert!(bad.parse::<BwSchedule>().is_err(), "{bad}");
        }
    }

    /// Takes 64 KiB chunks as fast as the limiter allows until `until`;
    /// returns (seconds since start, bytes) at each chunk.
    async fn pump(l: &RateLimiter, start: Instant, until: Duration, log: &mut Vec<(f64, u64)>) {
        let mut total = log.last().map_or(0, |e| e.1);
        while start.elapsed() < until {
            l.acquire(64 * 1024).await;
            total += 64 * 1024;
            log.push((start.elapsed().as_secs_f64(), total));
        }
    }

    fn bytes_between(log: &[(f64, u64)], a: f64, b: f64) -> u64 {
        let at = |t: f64| {
            log.iter()
                .take_while(|e| e.0 <= t)
                .last()
                .map_or(0, |e| e.1)
        };
        at(b) - at(a)
    }

    #[tokio::test(start_paused = true)]
    async fn average_rate_over_ten_seconds_is_within_five_percent() {
        for rate in [100 * 1024, MIB, 10 * MIB, 200 * MIB] {
            let l = RateLimiter::new(Some(rate), rate / 10);
            let start = Instant::now();
            let mut log = Vec::new();
            pump(&l, start, Duration::from_secs(12), &mut log).await;
            let got = bytes_between(&log, 1.0, 11.0) as f64 / 10.0;
            let err = (got - rate as f64).abs() / rate as f64;
            assert!(
                err < 0.05,
                "rate {rate}: got {got:.0} B/s ({:.1}% off)",
                err * 100.0
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_rate_takes_effect_within_a_second() {
        let l = RateLimiter::new(Some(MIB), 64 * 1024);
        let start = Instant::now();
        let mut log = Vec::new();
        pump(&l, start, Duration::from_secs(5), &mut log).await;
        l.set_rate(Some(8 * MIB));
        pump(&l, start, Duration::from_secs(10), &mut log).await;
        // From one second after the change, the new rate holds.
        let got = bytes_between(&log, 6.0, 10.0) as f64 / 4.0;
        assert!((got / (8 * MIB) as f64 - 1.0).abs() < 0.05, "got {got:.0}");
        l.set_rate(Some(MIB / 2));
        pump(&l, start, Duration::from_secs(16), &mut log).await;
        let got = bytes_between(&log, 11.0, 16.0) as f64 / 5.0;
        assert!((got / (MIB / 2) as f64 - 1.0).abs() < 0.05, "got {got:.0}");
    }

    #[tokio::test(start_paused = true)]
    async fn lifting_the_limit_releases_a_long_wait_within_a_second() {
        let l = RateLimiter::new(Some(10 * 1024), 4096);
        let start = Instant::now();
        l.acquire(4096).await;
        // A 1 MiB chunk at 10 KiB/s would wait 100 s.
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move {
                l.acquire(MIB).await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        l.set_rate(None);
        let done = waiter.await.unwrap();
        let after = done.duration_since(start).as_secs_f64();
        assert!((2.0..3.0).contains(&after), "released after {after:.2} s");
    }

    #[tokio::test(start_paused = true)]
    async fn the_lower_of_shared_and_own_wins() {
        // Two limiters in a row.
        let global = RateLimiter::new(Some(4 * MIB), 64 * 1024);
        let own = RateLimiter::new(Some(MIB), 64 * 1024);
        let start = Instant::now();
        let mut total = 0u64;
        let mut at_1 = 0;
        while start.elapsed() < Duration::from_secs(11) {
            global.acquire(64 * 1024).await;
            own.acquire(64 * 1024).await;
            total += 64 * 1024;
            if start.elapsed() <= Duration::from_secs(1) {
                at_1 = total;
            }
        }
        let got = (total - at_1) as f64 / 10.0;
        assert!((got / MIB as f64 - 1.0).abs() < 0.05, "got {got:.0}");
    }

    #[test]
    fn from_spec_builds_constant_and_scheduled_limiters() {
        let l = RateLimiter::from_spec("10M").unwrap();
        assert_eq!(l.rate(), Some(10 * MIB));
        assert!(l.is_limited());
        let l = RateLimiter::from_spec("off").unwrap();
        assert!(!l.is_limited());
        let l = RateLimiter::from_spec("00:00,1M 12:00,2M").unwrap();
        assert!(l.is_limited());
        assert!(matches!(l.rate(), Some(r) if r == MIB || r == 2 * MIB));
    }
}
