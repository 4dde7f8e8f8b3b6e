//! Progress display: on a terminal one bar per disk plus a total; otherwise
//! plain lines every few seconds. Rates are the exporter's (a moving window
//! that never counts bytes kept from an interrupted run), sizes and rates in
//! binary units throughout.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use hypersdk_core::report::{human_bytes, human_rate};
use hypersdk_core::{Phase, ProgressEvent};

/// How often plain-text progress lines are printed per disk.
const LINE_INTERVAL: Duration = Duration::from_secs(2);

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bars redrawn in place (stderr is a terminal).
    Bars,
    /// A line per disk every few seconds (stderr is a pipe or file).
    Lines,
    /// Nothing.
    Off,
}

pub struct Display {
    mode: Mode,
    multi: MultiProgress,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Per disk (by index): bar, bytes done, bytes in all, rate.
    disks: BTreeMap<usize, Disk>,
    packaging: Option<ProgressBar>,
    total: Option<ProgressBar>,
    last_line: BTreeMap<String, Instant>,
}

struct Disk {
    bar: Option<ProgressBar>,
    done: u64,
    total: u64,
    rate: f64,
    finished: bool,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn eta(secs: Option<f64>) -> String {
    match secs {
        Some(s) if s.is_finite() && s >= 0.5 => {
            let s = s.round() as u64;
            if s >= 3600 {
                format!("eta {}h{:02}m", s / 3600, (s % 3600) / 60)
            } else if s >= 60 {
                format!("eta {}m{:02}s", s / 60, s % 60)
            } else {
                format!("eta {s}s")
            }
        }
        _ => String::new(),
    }
}

impl Display {
    /// Bars on a terminal, lines elsewhere, or nothing (`quiet`).
    pub fn new(terminal: bool) -> Self {
        Self::with_mode(if terminal { Mode::Bars } else { Mode::Lines })
    }

    pub fn with_mode(mode: Mode) -> Self {
        Display {
            mode,
            multi: MultiProgress::with_draw_target(if mode == Mode::Bars {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            }),
            state: Mutex::new(State::default()),
        }
    }

    pub fn event(&self, e: &ProgressEvent) {
        if self.mode == Mode::Off {
            return;
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        match e.phase {
            Phase::Done => {}
            Phase::Disk | Phase::DiskDone => self.disk(&mut state, e),
            Phase::Packaging | Phase::Verify => self.other(&mut state, e),
        }
    }

    fn disk(&self, state: &mut State, e: &ProgressEvent) {
        let bars = self.mode == Mode::Bars;
        let d = state.disks.entry(e.disk_index).or_insert_with(|| {
            let bar = bars.then(|| {
                let b = self.multi.add(ProgressBar::new(e.bytes_total));
                b.set_style(style("{prefix:>12.bold} [{bar:30}] {percent:>3}% {msg}"));
                b.set_prefix(format!("disk {}", e.disk));
                b
            });
            Disk {
                bar,
                done: 0,
                total: e.bytes_total,
                rate: 0.0,
                finished: false,
            }
        });
        d.done = e.bytes_done;
        d.total = e.bytes_total;
        d.rate = e.rate_bps;
        d.finished = e.phase == Phase::DiskDone;
        let msg = format!(
            "{} / {}  {}  {}",
            human_bytes(e.bytes_done),
            human_bytes(e.bytes_total),
            human_rate(e.rate_bps),
            eta(e.eta_secs)
        );
        if let Some(bar) = &d.bar {
            bar.set_length(e.bytes_total);
            bar.set_position(e.bytes_done);
            bar.set_message(msg.clone());
            if d.finished {
                bar.finish_with_message(format!("{} done", human_bytes(e.bytes_total)));
            }
        }
        let (done, total, rate) = state.disks.values().fold((0, 0, 0.0), |a, d| {
            (
                a.0 + d.done,
                a.1 + d.total,
                a.2 + if d.finished { 0.0 } else { d.rate },
            )
        });
        let total_eta = (rate > 0.0).then(|| total.saturating_sub(done) as f64 / rate);
        if bars && state.disks.len() > 1 {
            let t = state.total.get_or_insert_with(|| {
                let b = self.multi.add(ProgressBar::new(total));
                b.set_style(style("{prefix:>12.bold} [{bar:30}] {percent:>3}% {msg}"));
                b.set_prefix("total");
                b
            });
            t.set_length(total);
            t.set_position(done);
            t.set_message(format!(
                "{} / {}  {}  {}",
                human_bytes(done),
                human_bytes(total),
                human_rate(rate),
                eta(total_eta)
            ));
        }
        if !bars {
            let key = format!("disk {}", e.disk);
            if self.due(state, &key, e.phase == Phase::DiskDone) {
                let pct = percent(e.bytes_done, e.bytes_total);
                eprintln!("{key}: {pct:.0}%  {msg}");
            }
        }
    }

    fn other(&self, state: &mut State, e: &ProgressEvent) {
        let what = if e.phase == Phase::Verify {
            "verify"
        } else {
            "package"
        };
        if self.mode == Mode::Bars {
            let b = state.packaging.get_or_insert_with(|| {
                let b = self.multi.add(ProgressBar::new(e.bytes_total));
                b.set_style(style("{prefix:>12.bold} [{bar:30}] {percent:>3}% {msg}"));
                b
            });
            b.set_prefix(what);
            b.set_length(e.bytes_total);
            b.set_position(e.bytes_done);
            b.set_message(format!("{}  {}", e.disk, human_rate(e.rate_bps)));
        } else {
            let key = format!("{what} {}", e.disk);
            let last = e.bytes_done >= e.bytes_total;
            if self.due(state, &key, last) {
                let rate = if e.rate_bps > 0.0 {
                    format!("  {}", human_rate(e.rate_bps))
                } else {
                    String::new()
                };
                eprintln!(
                    "{key}: {:.0}%  {} / {}{rate}",
                    percent(e.bytes_done, e.bytes_total),
                    human_bytes(e.bytes_done),
                    human_bytes(e.bytes_total),
                );
            }
        }
    }

    fn due(&self, state: &mut State, key: &str, force: bool) -> bool {
        let now = Instant::now();
        let due = state
            .last_line
            .get(key)
            .is_none_or(|t| now - *t >= LINE_INTERVAL);
        if due || force {
            state.last_line.insert(key.to_string(), now);
        }
        due || force
    }

    pub fn finish(&self) {
        if let Ok(state) = self.state.lock() {
            let bars = state
                .disks
                .values()
                .filter_map(|d| d.bar.as_ref())
                .chain(state.total.iter())
                .chain(state.packaging.iter());
            for bar in bars {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
    }
}

fn percent(done: u64, total: u64) -> f64 {
    if total > 0 {
        done as f64 * 100.0 / total as f64
    } else {
        100.0
    }
}
