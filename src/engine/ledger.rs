//! Every socket a run acted on, once each, with its last outcome.

use std::collections::HashMap;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::diag::{errno_text, Outcome};
use crate::socket::TcpSocket;

/// Every socket a run acted on (or, in a dry run, would), once each, with the
/// outcome of its last attempt, however many passes tried it.
///
/// Kept as two parallel vectors — the sockets as dumped (moved in without a
/// copy) and 16 bytes of outcome each — so a kill of 100k sockets holds each
/// socket once.
#[derive(Debug, Default)]
pub struct Ledger {
    sockets: Vec<TcpSocket>,
    meta: Vec<Meta>,
    /// cookie -> index.
    index: HashMap<u64, u32>,
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    outcome: Outcome,
    pass: u32,
    at_ms: u32,
}

/// One socket of [`Ledger`].
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The socket as first dumped.
    pub socket: &'a TcpSocket,
    /// What became of it.
    pub outcome: Outcome,
    /// The pass of the last attempt (0 in a dry run).
    pub pass: u32,
    /// Milliseconds from the start to the last attempt's acknowledgement.
    pub at_ms: u64,
}

/// What recording a pass learnt.
pub(crate) struct Recorded {
    /// A socket an earlier pass had attempted was destroyed now.
    pub progress: bool,
    /// Sockets of the batch no request was sent for.
    pub unsent: Vec<TcpSocket>,
}

impl Ledger {
    /// How many sockets.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The sockets with their outcomes, in the order they were first acted on.
    pub fn iter(&self) -> impl Iterator<Item = Entry<'_>> + Clone {
        self.sockets.iter().zip(&self.meta).map(|(socket, m)| Entry {
            socket,
            outcome: m.outcome,
            pass: m.pass,
            at_ms: u64::from(m.at_ms),
        })
    }

    /// How many have an outcome for which `which` holds.
    pub fn count(&self, which: impl Fn(Outcome) -> bool) -> usize {
        self.meta.iter().filter(|m| which(m.outcome)).count()
    }

    /// Whether the socket with this cookie was acted on.
    pub(crate) fn contains(&self, cookie: u64) -> bool {
        self.index.contains_key(&cookie)
    }

    /// A socket answered ENOENT (already gone) is still there: the kernel's
    /// lookup did not reach it (`not_found`).
    pub(crate) fn seen_again(&mut self, cookie: u64) {
        if let Some(&i) = self.index.get(&cookie) {
            let m = &mut self.meta[i as usize];
            if m.outcome == Outcome::AlreadyGone {
                m.outcome = Outcome::NotFound;
            }
        }
    }

    /// A dry run's list: `sockets`, each `WouldDestroy`.
    pub(crate) fn would_destroy(sockets: Vec<TcpSocket>) -> Ledger {
        let meta = vec![Meta { outcome: Outcome::WouldDestroy, pass: 0, at_ms: 0 }; sockets.len()];
        let index = sockets.iter().enumerate().map(|(i, s)| (s.cookie(), i as u32)).collect();
        Ledger { sockets, meta, index }
    }

    /// Records one pass over `batch`: `outcomes[i]` is `None` where no
    /// request was sent. A socket seen before keeps its place and gets the
    /// new outcome.
    pub(crate) fn record(
        &mut self,
        batch: Vec<TcpSocket>,
        outcomes: Vec<Option<Outcome>>,
        pass: u32,
        at_ms: u32,
    ) -> Recorded {
        let meta = |outcome| Meta { outcome, pass, at_ms };
        if self.sockets.is_empty() && outcomes.iter().all(Option::is_some) {
            // The usual first pass: the batch becomes the record as it is.
            self.meta = outcomes.into_iter().map(|o| meta(o.unwrap_or(Outcome::Unacknowledged))).collect();
            self.index = batch.iter().enumerate().map(|(i, s)| (s.cookie(), i as u32)).collect();
            self.sockets = batch;
            return Recorded { progress: false, unsent: Vec::new() };
        }
        let mut recorded = Recorded { progress: false, unsent: Vec::new() };
        let new = batch.iter().zip(&outcomes).filter(|(s, o)| o.is_some() && !self.contains(s.cookie())).count();
        self.sockets.reserve_exact(new);
        self.meta.reserve_exact(new);
        for (socket, outcome) in batch.into_iter().zip(outcomes) {
            let Some(outcome) = outcome else {
                recorded.unsent.push(socket);
                continue;
            };
            match self.index.get(&socket.cookie()) {
                Some(&i) => {
                    recorded.progress |= outcome == Outcome::Destroyed;
                    self.meta[i as usize] = meta(outcome);
                }
                None => {
                    self.index.insert(socket.cookie(), self.sockets.len() as u32);
                    self.sockets.push(socket);
                    self.meta.push(meta(outcome));
                }
            }
        }
        recorded
    }
}

impl Serialize for Entry<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        self.socket.serialize_fields(&mut map)?;
        map.serialize_entry("outcome", &self.outcome)?;
        map.serialize_entry("pass", &self.pass)?;
        map.serialize_entry("at_ms", &self.at_ms)?;
        if let Some(e) = self.outcome.errno() {
            map.serialize_entry("error", &errno_text(e))?;
        }
        map.end()
    }
}

impl Serialize for Ledger {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// A socket left alone on purpose, and why.
#[derive(Debug, Clone)]
pub struct Spared {
    /// The socket.
    pub socket: TcpSocket,
    /// Why it was left alone.
    pub reason: String,
}

impl Serialize for Spared {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        self.socket.serialize_fields(&mut map)?;
        map.serialize_entry("reason", &self.reason)?;
        map.end()
    }
}
