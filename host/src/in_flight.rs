//! Counting what is in progress (tool calls, responses being written), so that a shutdown can
//! wait for it.

use std::sync::Arc;

/// How many things are in progress.
#[derive(Debug)]
pub struct InFlight(tokio::sync::watch::Sender<usize>);

impl Default for InFlight {
    fn default() -> Self {
        Self(tokio::sync::watch::Sender::new(0))
    }
}

impl InFlight {
    /// Counts one more until the returned guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.0.send_modify(|n| *n += 1);
        InFlightGuard(Arc::clone(self))
    }

    /// Returns once nothing is in progress.
    pub async fn idle(&self) {
        let mut running = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = running.wait_for(|n| *n == 0).await;
    }
}

/// One thing in progress; see [`InFlight::enter`].
#[derive(Debug)]
pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0 .0.send_modify(|n| *n -= 1);
    }
}
