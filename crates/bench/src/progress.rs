//! Progress of a long benchmark run: a bar on a terminal, one line per stage otherwise.
//!
//! indicatif draws nothing when stderr is not a terminal, which is exactly where long
//! runs end up (CI logs, `nohup`, `tee`); there each stage prints a line with the elapsed
//! time, the invocations done and an estimate of the time left.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// Progress over a known number of invocations.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: AtomicU64,
    started: Instant,
}

impl Progress {
    /// Progress over `total` invocations, drawn as a bar when stderr is a terminal.
    pub(crate) fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} (eta {eta}) {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        Self {
            bar,
            total,
            done: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Starts a stage: what runs next.
    pub(crate) fn stage(&self, what: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(what.to_string()),
            None => {
                let done = self.done.load(Ordering::Relaxed);
                let elapsed = self.started.elapsed().as_secs();
                let eta = (elapsed * self.total.saturating_sub(done))
                    .checked_div(done)
                    .map(|left| format!(", ~{} left", clock(left)))
                    .unwrap_or_default();
                let _ = writeln!(
                    std::io::stderr(),
                    "[{}] {done}/{} invocations{eta}: {what}",
                    clock(elapsed),
                    self.total
                );
            }
        }
    }

    /// One invocation done.
    pub(crate) fn inc(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// The run is over.
    pub(crate) fn finish(&self) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => {
                let _ = writeln!(
                    std::io::stderr(),
                    "[{}] {}/{} invocations: done",
                    clock(self.started.elapsed().as_secs()),
                    self.done.load(Ordering::Relaxed),
                    self.total
                );
            }
        }
    }

    /// Reports something that went wrong, above the bar when there is one. Writing to a
    /// closed stderr is not an error here (no panic).
    pub(crate) fn error(&self, what: &str) {
        self.line(&format!("error: {what}"));
    }

    /// Reports something the reader must weigh (the results stay valid), above the bar.
    pub(crate) fn warn(&self, what: &str) {
        self.line(&format!("warning: {what}"));
    }

    /// Reports a measured fact, above the bar when there is one.
    pub(crate) fn note(&self, what: &str) {
        self.line(&format!("bench: {what}"));
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => {
                let _ = writeln!(std::io::stderr(), "{text}");
            }
        }
    }
}

/// `secs` as `H:MM:SS`.
fn clock(secs: u64) -> String {
    format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}
