//! Shutdown as a tree: a cancellation token that children inherit, and task trackers to drain before exit.
//!
//! Triggering a node cancels it and every node below it, never the ones above. A task spawned on a node is
//! counted by that node and by all its ancestors, so [`Shutdown::wait_tasks`] on the root waits for every
//! task of the process, and on a child only for the tasks of that subtree.

use std::future::Future;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A node of the shutdown tree. Clones share the node.
#[derive(Clone, Debug)]
pub struct Shutdown {
    token: CancellationToken,
    /// This node's tracker first, then its ancestors' up to the root.
    trackers: Arc<[TaskTracker]>,
}

impl Shutdown {
    /// A new root.
    pub fn new() -> Self {
        Shutdown {
            token: CancellationToken::new(),
            trackers: Arc::from([TaskTracker::new()]),
        }
    }

    /// Cancel this node and its descendants.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once this node (or an ancestor) is triggered.
    pub async fn triggered(&self) {
        self.token.cancelled().await;
    }

    /// A node below this one: triggered when this one is, but triggering it leaves this one running.
    /// It has its own tracker; its tasks also count towards this node's.
    pub fn child(&self) -> Shutdown {
        let trackers: Vec<TaskTracker> = std::iter::once(TaskTracker::new())
            .chain(self.trackers.iter().cloned())
            .collect();
        Shutdown {
            token: self.token.child_token(),
            trackers: trackers.into(),
        }
    }

    /// Spawn a tracked task on the current tokio runtime (panics outside one, like `tokio::spawn`).
    ///
    /// The task should watch [`Shutdown::triggered`] and finish when it fires.
    pub fn spawn<F>(&self, f: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let held: Vec<_> = self.trackers.iter().map(TaskTracker::token).collect();
        tokio::spawn(async move {
            f.await;
            drop(held);
        })
    }

    /// Close this node's tracker and wait until every task spawned on it or its descendants has finished.
    pub async fn wait_tasks(&self) {
        let own = &self.trackers[0];
        own.close();
        own.wait().await;
    }

    /// The node's cancellation token, for APIs that take one.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

/// Spawn a task that triggers `shutdown` on SIGTERM or SIGINT, logging which one.
///
/// A second signal means the drain is taking too long for whoever sent it: the process exits at once
/// with status 128 + the signal number. Must be called inside a tokio runtime; the handlers are in
/// place when it returns.
pub fn on_signals(shutdown: &Shutdown) {
    // Registered before returning, so a signal sent right after this call is already caught.
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM/SIGINT");
            return;
        }
    };
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut received = 0u32;
        while let Some((name, number)) = signals.next().await {
            received += 1;
            if received == 1 {
                tracing::info!(signal = name, "shutting down: draining");
                shutdown.trigger();
            } else {
                tracing::warn!(signal = name, "second signal while draining: exiting now");
                std::process::exit(128 + number);
            }
        }
    });
}

/// The termination signals a process listens for.
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal as (name, number); `None` once the runtime stops delivering them.
    async fn next(&mut self) -> Option<(&'static str, i32)> {
        tokio::select! {
            got = self.term.recv() => got.map(|()| ("SIGTERM", 15)),
            got = self.int.recv() => got.map(|()| ("SIGINT", 2)),
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Signals)
    }

    async fn next(&mut self) -> Option<(&'static str, i32)> {
        tokio::signal::ctrl_c().await.ok().map(|()| ("ctrl-c", 2))
    }
}
