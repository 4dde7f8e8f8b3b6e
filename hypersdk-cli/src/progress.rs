//! Progress display: one bar per disk on a terminal, plain lines otherwise.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use hypersdk_core::{Phase, ProgressEvent};

/// How often plain-text progress lines are printed per disk.
const LINE_INTERVAL: Duration = Duration::from_secs(2);

pub struct Display {
    terminal: bool,
    multi: MultiProgress,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    bars: HashMap<String, ProgressBar>,
    last_line: HashMap<String, Instant>,
}

impl Display {
    pub fn new(terminal: bool) -> Self {
        Display {
            terminal,
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            state: Mutex::new(State::default()),
        }
    }

    pub fn event(&self, e: &ProgressEvent) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let key = match e.phase {
            Phase::Packaging => format!("package {}", e.disk),
            Phase::Done => return,
            _ => format!("disk {}", e.disk),
        };
        if self.terminal {
            let bar = state.bars.entry(key.clone()).or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(e.bytes_total));
                let style = ProgressStyle::with_template(
                    "{prefix:>14} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(key.clone());
                bar
            });
            bar.set_position(e.bytes_done);
            if e.phase == Phase::DiskDone {
                bar.finish();
            }
        } else {
            let now = Instant::now();
            let due = state
                .last_line
                .get(&key)
                .is_none_or(|t| now - *t >= LINE_INTERVAL);
            if due || e.phase == Phase::DiskDone {
                state.last_line.insert(key.clone(), now);
                let pct = if e.bytes_total > 0 {
                    e.bytes_done as f64 * 100.0 / e.bytes_total as f64
                } else {
                    100.0
                };
                let eta = e
                    .eta_secs
                    .map(|s| format!(", eta {s:.0} s"))
                    .unwrap_or_default();
                eprintln!(
                    "{key}: {}/{} bytes ({pct:.0}%), {:.1} MB/s{eta}",
                    e.bytes_done,
                    e.bytes_total,
                    e.rate_bps / 1e6
                );
            }
        }
    }

    pub fn finish(&self) {
        if let Ok(state) = self.state.lock() {
            for bar in state.bars.values() {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
    }
}
