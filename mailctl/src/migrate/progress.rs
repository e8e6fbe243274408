//! The progress bar of a run: mailboxes done, bytes copied, rate and time left, redrawn in place
//! on a terminal and printed every few seconds otherwise.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Progress shared by the moves of a run.
pub struct Progress {
    pub total: usize,
    pub done: AtomicUsize,
    pub failed: AtomicUsize,
    pub bytes: AtomicU64,
    pub planned_bytes: u64,
    started: Instant,
    tty: bool,
    last: Mutex<Instant>,
}

impl Progress {
    pub fn new(total: usize, planned_bytes: u64) -> Progress {
        Progress {
            total,
            done: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            planned_bytes,
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            last: Mutex::new(Instant::now()),
        }
    }

    /// Count `n` bytes copied (and redraw when it is time).
    pub fn count(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.tick(false);
    }

    fn line(&self) -> String {
        let bytes = self.bytes.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = bytes as f64 / secs;
        let done = self.done.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed);
        let frac = if self.planned_bytes > 0 {
            (bytes as f64 / self.planned_bytes as f64).min(1.0)
        } else if self.total > 0 {
            done as f64 / self.total as f64
        } else {
            1.0
        };
        let left = if rate > 0.0 && self.planned_bytes > bytes {
            format!("{:.0} s left", (self.planned_bytes - bytes) as f64 / rate)
        } else {
            "-".into()
        };
        let width = 30;
        let filled = (frac * width as f64) as usize;
        format!(
            "[{}{}] {done}/{} mailboxes, {:.1} MB, {:.1} MB/s, {left}",
            "=".repeat(filled),
            " ".repeat(width - filled),
            self.total,
            bytes as f64 / 1e6,
            rate / 1e6
        )
    }

    /// Redraw the bar (on a terminal, at most 5 times a second; otherwise a line every 5 s).
    pub fn tick(&self, force: bool) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if !force && last.elapsed() < every {
            return;
        }
        *last = Instant::now();
        if self.tty {
            eprint!("\r{}\x1b[K", self.line());
        } else {
            eprintln!("{}", self.line());
        }
    }

    pub fn finish(&self) {
        self.tick(true);
        if self.tty {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_bytes_or_else_with_mailboxes() {
        let p = Progress::new(4, 1_000_000);
        assert!(p
            .line()
            .starts_with(&format!("[{}] 0/4 mailboxes, 0.0 MB", " ".repeat(30))));
        p.bytes.store(500_000, Ordering::Relaxed);
        p.done.store(1, Ordering::Relaxed);
        let line = p.line();
        let bar = format!(
            "[{}{}] 1/4 mailboxes, 0.5 MB",
            "=".repeat(15),
            " ".repeat(15)
        );
        assert!(
            line.starts_with(&bar) && line.ends_with(" s left"),
            "{line}"
        );
        p.bytes.store(2_000_000, Ordering::Relaxed);
        assert!(p.line().starts_with(&format!("[{}]", "=".repeat(30))));
        assert!(p.line().ends_with(", -"), "{}", p.line());

        // Nothing planned in bytes (empty mailboxes): mailboxes finished, failed ones too.
        let p = Progress::new(4, 0);
        p.done.store(1, Ordering::Relaxed);
        p.failed.store(1, Ordering::Relaxed);
        assert!(p
            .line()
            .starts_with(&format!("[{}{}] 2/4", "=".repeat(15), " ".repeat(15))));
        assert!(Progress::new(0, 0)
            .line()
            .starts_with(&format!("[{}]", "=".repeat(30))));
    }
}
