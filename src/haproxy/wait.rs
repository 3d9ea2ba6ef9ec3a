//! HAProxy's `wait <grace> srv-removable` (3.0+) on its own connection and
//! thread, polled by the loop between looks: grace lasts until it is answered.

use std::time::Duration;

use tracing::{info, warn};

use super::api::Pending;
use super::parse::{self, WaitAnswer};
use crate::engine::run::{Awaited, Clock, WallClock};
use crate::error::Error;

/// Milliseconds, as the report counts them.
pub fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// HAProxy's `wait <grace> srv-removable` on its own connection, polled by the loop.
pub struct WaitCall {
    cmd: String,
    pending: Option<Pending>,
    clock: WallClock,
    /// HAProxy's answer.
    pub answer: Option<WaitAnswer>,
    /// When it came, in ms from the start.
    pub at_ms: Option<u64>,
    /// Why there is no usable answer.
    pub error: Option<Error>,
}

impl Awaited for WaitCall {
    fn poll(&mut self) -> Option<bool> {
        let answer = self.pending.as_mut()?.try_take()?;
        self.pending = None;
        self.at_ms = Some(ms(self.clock.now()));
        match answer.and_then(|a| parse::parse_wait(&self.cmd, &a)) {
            Ok(a) => {
                info!(cmd = %self.cmd, answer = ?a, at_ms = self.at_ms, "HAProxy answered");
                self.answer = Some(a);
                // `Done.`: HAProxy says the server has no session left; waiting longer is pointless.
                Some(a == WaitAnswer::Done)
            }
            Err(e) => {
                warn!(%e, "no usable answer to `wait`: enforcing without it");
                self.error = Some(e);
                Some(false)
            }
        }
    }
}

impl WaitCall {
    /// `cmd`, sent and pending on its own connection.
    pub fn new(cmd: String, pending: Pending, clock: WallClock) -> WaitCall {
        WaitCall { cmd, pending: Some(pending), clock, answer: None, at_ms: None, error: None }
    }

    /// At the end of the run: a short last chance for an answer still pending, then abandoned.
    pub fn settle(&mut self, patience: Duration) {
        if let Some(p) = self.pending.as_mut() {
            let _ = p.wait(patience);
        }
        if self.pending.is_some() && self.poll().is_none() {
            self.pending = None; // dropping it closes the connection: HAProxy ends the wait
            self.error = Some(Error::Internal("`wait` was still unanswered when the run ended".into()));
        }
    }
}
