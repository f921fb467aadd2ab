//! A subscription that stays up: when the broker goes away (restart,
//! network) it says so, waits with a growing backoff, subscribes again and
//! says that too. The broker redelivers everything still waiting on the new
//! stream, so nothing is missed; the caller only has to treat a referral it
//! has already seen as the same one (by message id).
//!
//! Shared by `listen` and the web console.

use std::time::Duration;

use crate::Client;
use crate::alerts::AlertEvent;

/// What a live subscription reports.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// The stream is open (the first time, or again after a break).
    Connected { again: bool },
    /// An alert from the broker.
    Alert(AlertEvent),
    /// The stream broke; the next attempt is in `retry_in`.
    Down { error: String, retry_in: Duration },
}

/// How long to wait before each new attempt.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { first: Duration::from_millis(500), max: Duration::from_secs(30) }
    }
}

/// Runs the subscription until `on_event` returns false (or the task is
/// dropped), reconnecting for ever. Errors that no retry can cure (a
/// refused certificate, a directory that fails verification) are reported
/// as `Down` all the same: the person on call must see them, and a fixed
/// credential or directory is picked up by the next attempt.
pub async fn run(client: &Client, backoff: Backoff, mut on_event: impl FnMut(LiveEvent) -> bool) {
    let mut wait = backoff.first;
    let mut again = false;
    loop {
        let error = match client.subscribe().await {
            Ok(mut alerts) => {
                if !on_event(LiveEvent::Connected { again }) {
                    return;
                }
                again = true;
                loop {
                    match alerts.next().await {
                        Ok(Some(ev)) => {
                            // A stream that delivers is healthy: start the backoff afresh.
                            wait = backoff.first;
                            if !on_event(LiveEvent::Alert(ev)) {
                                return;
                            }
                        }
                        Ok(None) => break "the broker ended the stream".to_owned(),
                        Err(e) => break crate::error_chain(&e),
                    }
                }
            }
            Err(e) => crate::error_chain(&e),
        };
        if !on_event(LiveEvent::Down { error, retry_in: wait }) {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(backoff.max);
    }
}
