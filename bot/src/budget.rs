//! What one job may spend: wall-clock time and memory. A watchdog beside each running job checks
//! both every quarter second; past either, it raises the job's cancel flag, and the job fails
//! with a reason the user can act on (not retried: the same file would do it again).
//!
//! Memory is the bot process's resident set (`VmRSS`) over what it was when the job started, so
//! a job is charged for what it made the process grow, whatever the header of its file claimed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The limits every job runs under.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub wall: Duration,
    /// Bytes the process may grow by while the job runs; `None`: unbounded.
    pub memory: Option<u64>,
}

/// Which limit a job ran past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Time { limit_secs: u64 },
    Memory { limit_mb: u64 },
}

impl Exceeded {
    /// What the user is told.
    pub fn user_text(self) -> String {
        match self {
            Exceeded::Time { limit_secs } => {
                let limit = if limit_secs >= 60 {
                    format!("{} min", limit_secs.div_ceil(60))
                } else {
                    format!("{limit_secs} s")
                };
                format!("it took longer than this bot's limit of {limit} for one job; send a shorter video")
            }
            Exceeded::Memory { limit_mb } => format!(
                "it needed more memory than this bot's limit of {limit_mb} MB for one job; send a shorter video"
            ),
        }
    }
}

/// A job that is running now: its cancel flag and what its watchdog saw.
#[derive(Debug)]
pub struct Running {
    pub cancel: Arc<AtomicBool>,
    started: Instant,
    rss_at_start: Option<u64>,
    exceeded: Mutex<Option<Exceeded>>,
}

impl Running {
    pub fn new() -> Arc<Self> {
        Arc::new(Running {
            cancel: Arc::new(AtomicBool::new(false)),
            started: Instant::now(),
            rss_at_start: resident_bytes(),
            exceeded: Mutex::new(None),
        })
    }

    /// The limit this job ran past, if any.
    pub fn exceeded(&self) -> Option<Exceeded> {
        *self.exceeded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks the budget once; past it, records why and raises the cancel flag. True when over.
    pub fn check(&self, budget: &Budget) -> bool {
        if self.exceeded().is_some() {
            return true;
        }
        let over = if self.started.elapsed() > budget.wall {
            Some(Exceeded::Time {
                limit_secs: budget.wall.as_secs_f64().ceil() as u64,
            })
        } else {
            match (budget.memory, self.rss_at_start, resident_bytes()) {
                (Some(limit), Some(base), Some(now)) if now.saturating_sub(base) > limit => {
                    Some(Exceeded::Memory {
                        limit_mb: limit / 1_000_000,
                    })
                }
                _ => None,
            }
        };
        if let Some(e) = over {
            *self.exceeded.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            self.cancel.store(true, Ordering::SeqCst);
            tracing::warn!(?e, "a job ran past its budget; cancelling it");
            true
        } else {
            false
        }
    }

    /// Resolves once the job has run past its budget (then its cancel flag is up).
    pub async fn watch(&self, budget: Budget) {
        loop {
            if self.check(&budget) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The process's resident memory, bytes (Linux `/proc/self/status`); `None` elsewhere.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_past_the_limit_raises_the_flag() {
        let r = Running::new();
        let b = Budget {
            wall: Duration::from_millis(30),
            memory: None,
        };
        assert!(!r.check(&b));
        assert!(!r.cancel.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(50));
        assert!(r.check(&b));
        assert!(r.cancel.load(Ordering::SeqCst));
        assert_eq!(r.exceeded(), Some(Exceeded::Time { limit_secs: 1 }));
        assert!(r.exceeded().unwrap().user_text().contains("limit of 1 s"));
        assert!(Exceeded::Time { limit_secs: 7200 }
            .user_text()
            .contains("limit of 120 min"));
    }

    /// Growing the process by 64 MB against a 16 MB budget trips it; the memory is touched so it
    /// is resident, not only reserved.
    #[test]
    fn memory_the_job_adds_is_what_counts() {
        if resident_bytes().is_none() {
            eprintln!("SKIPPED: no /proc/self/status on this system");
            return;
        }
        let r = Running::new();
        let b = Budget {
            wall: Duration::from_secs(3600),
            memory: Some(16_000_000),
        };
        assert!(!r.check(&b), "nothing grown yet");
        let big = std::hint::black_box(vec![1u8; 64 << 20]);
        assert!(r.check(&b), "64 MB over a 16 MB budget");
        assert_eq!(r.exceeded(), Some(Exceeded::Memory { limit_mb: 16 }));
        assert!(r.cancel.load(Ordering::SeqCst));
        drop(big);
    }
}
