//! A client that hears what a server sends while a call runs: log messages and progress.
#![allow(deprecated)] // MCP logging, deprecated in rmcp by SEP-2577 but what clients use

use std::future::Future;

use rmcp::model::{LoggingMessageNotificationParam, ProgressNotificationParam};
use rmcp::service::NotificationContext;
use rmcp::{ClientHandler, RoleClient};
use tokio::sync::mpsc;

/// A notification a [`Listener`] heard.
#[derive(Debug, Clone)]
pub enum Heard {
    /// `notifications/message`.
    Log(LoggingMessageNotificationParam),
    /// `notifications/progress`.
    Progress(ProgressNotificationParam),
}

/// A client handler that passes every log message and progress notification on, in order.
#[derive(Debug, Clone)]
pub struct Listener {
    heard: mpsc::UnboundedSender<Heard>,
}

impl Listener {
    /// A listener, and where what it hears arrives.
    pub fn new() -> (Listener, mpsc::UnboundedReceiver<Heard>) {
        let (heard, receiver) = mpsc::unbounded_channel();
        (Listener { heard }, receiver)
    }
}

impl ClientHandler for Listener {
    fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) -> impl Future<Output = ()> + Send + '_ {
        let _ = self.heard.send(Heard::Log(params));
        std::future::ready(())
    }

    fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) -> impl Future<Output = ()> + Send + '_ {
        let _ = self.heard.send(Heard::Progress(params));
        std::future::ready(())
    }
}
