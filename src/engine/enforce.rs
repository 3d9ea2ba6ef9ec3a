//! The one enforcement loop: look (collect + classify), destroy, look again,
//! under a [`Policy`] — used by `kill` (passes, `--for`) and by the HAProxy
//! mode (grace, settle, deadline, window) alike.
//!
//! A run never loses its report: whatever stops it after the first destroy (an
//! error, a signal, a deadline), [`Run::finish`] returns the [`Report`] of what
//! was done, with the error in it. Only [`Run::start`] fails outright, and it
//! does so before anything is destroyed.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use tracing::{debug, warn};

use super::{Engine, Query};
use crate::audit::AuditLog;
use crate::cancel::Cancel;
use crate::diag::{errno_text, Outcome};
use crate::error::{Error, Result};
use crate::socket::TcpSocket;

/// Passes allowed while each one still destroys sockets an earlier pass
/// could not (an SO_REUSEPORT group gives up one member per lookup).
pub const MAX_PASSES: u32 = 64;

/// When to destroy, how often to look, and when to stop.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Look once, destroy nothing: the report lists what would be destroyed.
    pub dry_run: bool,
    /// Look again after destroying (the verification dump). Without it the run
    /// ends after the first pass and what remains is unknown.
    pub verify: bool,
    /// Destroy passes before giving up on sockets that still match (extended
    /// while passes make progress, up to [`MAX_PASSES`]); `None` = no limit
    /// (the deadline or the window ends the run).
    pub passes: Option<u32>,
    /// Destroy nothing before this long after the start (the owner's chance to close).
    pub grace: Duration,
    /// Clean only once no target was seen for this long.
    pub settle: Duration,
    /// Stop (not clean) at this time after the start.
    pub deadline: Option<Duration>,
    /// Keep looking, and destroying new targets, until this time after the start.
    pub window: Option<Duration>,
    /// Time between looks while waiting (grace, settle, window).
    pub interval: Duration,
    /// Refuse a first look with more targets than this (nothing is destroyed),
    /// and do not send a later pass larger than this.
    pub max: Option<usize>,
}

impl Policy {
    /// A plain kill: destroy now, verify, up to three passes.
    pub fn kill() -> Policy {
        Policy {
            dry_run: false,
            verify: true,
            passes: Some(3),
            grace: Duration::ZERO,
            settle: Duration::ZERO,
            deadline: None,
            window: None,
            interval: Duration::from_millis(100),
            max: None,
        }
    }
}

/// What a [`Judge`] makes of one socket of a look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Destroy it.
    Target,
    /// Not something this run is about (e.g. held by another process): not reported.
    Ignore,
    /// Left alone on purpose (e.g. it belongs to another HAProxy server); reported, and
    /// it does not affect the result.
    Keep(String),
    /// Left alone because it cannot be told apart; reported, and the run is not
    /// clean while one remains.
    Unsure(String),
}

/// The caller's part of the loop: which sockets of a look are targets, and
/// what to make of targets that disappeared without a destroy of ours.
pub trait Judge {
    /// One class per socket of `sockets` (a fresh look), in order. May fill
    /// in `owners`. An error ends the run (with its report).
    fn classify(&mut self, sockets: &mut [TcpSocket]) -> Result<Vec<Class>>;

    /// Targets of the previous look that are gone, and were not destroyed by
    /// this run (their owner closed them), `at_ms` after the start.
    fn vanished(&mut self, _sockets: Vec<TcpSocket>, _at_ms: u64) {}
}

/// Every socket the query matches is a target.
#[derive(Debug, Default, Clone, Copy)]
pub struct Everything;

impl Judge for Everything {
    fn classify(&mut self, sockets: &mut [TcpSocket]) -> Result<Vec<Class>> {
        Ok(vec![Class::Target; sockets.len()])
    }
}

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

    /// A dry run's list: `sockets`, each `WouldDestroy`.
    fn would_destroy(sockets: Vec<TcpSocket>) -> Ledger {
        let meta = vec![Meta { outcome: Outcome::WouldDestroy, pass: 0, at_ms: 0 }; sockets.len()];
        Ledger { sockets, meta }
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

/// Counts of a [`Report`]. Every socket is counted once: `matched` +
/// `new_during_kill` = the sockets in `sockets` + those never attempted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Targets at the first look.
    pub matched: usize,
    /// Targets that appeared only in a later look (connections made during the run).
    pub new_during_kill: usize,
    /// Sockets destroyed.
    pub destroyed: usize,
    /// Sockets gone before their destroy arrived.
    pub already_gone: usize,
    /// Sockets the kernel's lookup did not reach though they are alive (reuseport groups).
    pub not_found: usize,
    /// Destroys the kernel refused.
    pub failed: usize,
    /// Destroys whose acknowledgement was lost.
    pub unacknowledged: usize,
    /// Targets at the end (`null` when not verified).
    pub remaining: Option<usize>,
    /// Of those, targets of the first look that survived.
    pub remaining_original: Option<usize>,
    /// Of those, targets that appeared during the run.
    pub remaining_new: Option<usize>,
    /// Destroy passes sent.
    pub passes: u32,
    /// A look after the last destroy tells what remains.
    pub verified: bool,
    /// A signal (or the caller's [`Cancel`]) stopped the run early.
    pub interrupted: bool,
    /// Wall time of the run.
    pub duration_ms: u64,
}

/// What a run did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Nothing was destroyed on purpose.
    pub dry_run: bool,
    /// Every target acted on, once each (a dry run lists what it would destroy).
    pub sockets: Ledger,
    /// Targets still there at the end; `None` when not verified.
    pub remaining: Option<Vec<TcpSocket>>,
    /// Sockets left alone on purpose at the last look.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<Spared>,
    /// Sockets left alone because they could not be told apart, at the last look.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unsure: Vec<Spared>,
    /// Counts.
    pub summary: Summary,
    /// No target for the settle period at the end (and the window is over).
    #[serde(skip)]
    pub clean: bool,
    /// When a target was last seen, in ms from the start.
    #[serde(skip)]
    pub last_seen_ms: Option<u64>,
    /// What stopped the run early, if an error did.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "error_text")]
    pub error: Option<Error>,
}

fn error_text<S: Serializer>(e: &Option<Error>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match e {
        Some(e) => s.serialize_str(&e.to_string()),
        None => s.serialize_none(),
    }
}

impl Report {
    /// Whether anything may have been destroyed (acknowledged or not).
    pub fn destroyed_any(&self) -> bool {
        self.summary.destroyed + self.summary.unacknowledged > 0
    }

    /// The documented exit code: 0 nothing matching remains at the end, 1 something
    /// does (or an error or a signal came after something was done), 2 an error or
    /// a signal before anything was done. `changed_elsewhere` counts as done (e.g.
    /// commands that changed HAProxy's state).
    pub fn exit_code(&self, changed_elsewhere: bool) -> i32 {
        let done = self.destroyed_any() || changed_elsewhere;
        if self.error.is_some() || self.summary.interrupted {
            return if done { 1 } else { 2 };
        }
        if self.dry_run {
            return if self.sockets.is_empty() && self.unsure.is_empty() { 0 } else { 1 };
        }
        let settled = if self.summary.verified {
            self.clean
        } else {
            self.sockets.count(|o| !matches!(o, Outcome::Destroyed | Outcome::AlreadyGone)) == 0
        };
        if settled && self.unsure.is_empty() {
            0
        } else {
            1
        }
    }
}

/// One look: the targets, and what was left alone.
#[derive(Debug, Default)]
struct Look {
    targets: Vec<TcpSocket>,
    kept: Vec<Spared>,
    unsure: Vec<Spared>,
}

/// A run of the loop. [`Run::start`] takes the first look (errors there mean
/// nothing was done); the caller may then act (e.g. send HAProxy its
/// commands); [`Run::finish`] enforces and reports.
pub struct Run<'a, J: Judge> {
    engine: &'a mut Engine,
    query: &'a Query,
    policy: Policy,
    judge: J,
    cancel: Option<&'a Cancel>,
    audit: Option<&'a AuditLog>,
    started: Instant,
    look: Look,
    /// Targets of the first look.
    original: HashSet<u64>,
    /// Targets first seen later and never attempted (those attempted are in `index`).
    later: HashSet<u64>,
    ledger: Ledger,
    /// cookie -> index in `ledger`.
    index: HashMap<u64, u32>,
    /// Sockets the kernel refused for good: not retried.
    refused: HashSet<u64>,
    new_during: usize,
    passes: u32,
    last_seen: Option<Duration>,
}

impl<'a, J: Judge> Run<'a, J> {
    /// Takes the first look. Fails (nothing done) on a collect or judge error,
    /// or when more targets than `policy.max` match.
    pub fn start(
        engine: &'a mut Engine,
        query: &'a Query,
        policy: Policy,
        mut judge: J,
        cancel: Option<&'a Cancel>,
        audit: Option<&'a AuditLog>,
    ) -> Result<Run<'a, J>> {
        let started = Instant::now();
        let look = take_look(engine, query, &mut judge)?;
        if let Some(max) = policy.max.filter(|m| look.targets.len() > *m) {
            return Err(Error::TooMany { matched: look.targets.len(), max });
        }
        let original: HashSet<u64> = look.targets.iter().map(TcpSocket::cookie).collect();
        let last_seen = (!look.targets.is_empty()).then_some(Duration::ZERO);
        Ok(Run {
            engine,
            query,
            policy,
            judge,
            cancel,
            audit,
            started,
            later: HashSet::new(),
            original,
            look,
            ledger: Ledger::default(),
            index: HashMap::new(),
            refused: HashSet::new(),
            new_during: 0,
            passes: 0,
            last_seen,
        })
    }

    /// Targets at the first look.
    pub fn matched(&self) -> usize {
        self.original.len()
    }

    /// The judge, for callers that act between start and finish.
    pub fn judge_mut(&mut self) -> &mut J {
        &mut self.judge
    }

    fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(Cancel::is_cancelled)
    }

    fn sleep(&self, d: Duration) {
        match self.cancel {
            Some(c) => {
                c.sleep(d);
            }
            None => std::thread::sleep(d),
        }
    }

    /// Ends the run without destroying anything (the caller hit `error` between
    /// [`Run::start`] and [`Run::finish`]): the report holds the first look.
    pub fn stop(self, error: Error) -> (Report, J) {
        let verified = !self.policy.dry_run;
        self.report(false, verified, false, Some(error))
    }

    /// Ends the run without destroying anything because a cancel request came
    /// between [`Run::start`] and [`Run::finish`].
    pub fn interrupt(self) -> (Report, J) {
        let verified = !self.policy.dry_run;
        self.report(false, verified, true, None)
    }

    /// Enforces under the policy until clean, out of passes, past the deadline,
    /// cancelled or stopped by an error, and reports. Returns the judge too.
    pub fn finish(mut self) -> (Report, J) {
        if self.policy.dry_run {
            return self.dry_report();
        }
        let mut error = None;
        let mut interrupted = false;
        let mut clean = false;
        let mut verified = true;
        // Destroys since the last look (its targets no longer tell what remains).
        let mut stale = false;
        let mut passes_after_window = 0u32;
        let mut last_pass_progress = false;
        let window_end = self.policy.window.unwrap_or(Duration::ZERO);
        loop {
            let now = self.started.elapsed();
            if self.cancelled() {
                interrupted = true;
                break;
            }
            let in_window = now < window_end;
            let quiet = now.saturating_sub(self.last_seen.unwrap_or(Duration::ZERO));
            if self.look.targets.is_empty() && quiet >= self.policy.settle && !in_window {
                clean = true;
                break;
            }
            if self.policy.deadline.is_some_and(|d| now >= d) {
                break;
            }
            let attemptable = self.look.targets.iter().filter(|s| !self.refused.contains(&s.cookie())).count();
            if now >= self.policy.grace && attemptable > 0 {
                if !in_window {
                    if let Some(n) = self.policy.passes {
                        let extend = last_pass_progress && passes_after_window < MAX_PASSES;
                        if passes_after_window >= n && !extend {
                            break;
                        }
                    }
                }
                if let Some(max) = self.policy.max.filter(|m| attemptable > *m) {
                    error = Some(Error::PassTooLarge { count: attemptable, max });
                    break;
                }
                self.passes += 1;
                if !in_window {
                    passes_after_window += 1;
                }
                let (progress, err, cut) = self.destroy_pass();
                stale = true;
                last_pass_progress = progress;
                if let Some(e) = err {
                    error = Some(e);
                    break;
                }
                if cut {
                    interrupted = true;
                    break;
                }
                if !self.policy.verify {
                    verified = false;
                    break;
                }
                // A kill verifies at once; a run that waits for quiet looks again after an interval.
                if !self.policy.settle.is_zero() || in_window {
                    self.sleep(self.policy.interval);
                }
            } else {
                if now >= self.policy.grace && !in_window && self.policy.settle.is_zero() {
                    // Only sockets the kernel refused remain, and nothing will change them.
                    break;
                }
                let wait = self.next_wait(now, window_end);
                self.sleep(wait);
            }
            if self.cancelled() {
                interrupted = true;
                break;
            }
            match take_look(self.engine, self.query, &mut self.judge) {
                Ok(look) => {
                    self.observe(look);
                    stale = false;
                }
                Err(Error::Interrupted(_)) => {
                    interrupted = true;
                    break;
                }
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        // What remains, when the last look is older than the last destroy.
        let abandoned = self.cancel.is_some_and(Cancel::is_abandoned);
        if stale && verified {
            if abandoned {
                verified = false;
            } else {
                match take_look(self.engine, self.query, &mut self.judge) {
                    Ok(look) => self.observe(look),
                    Err(Error::Interrupted(_)) => verified = false,
                    Err(e) => {
                        warn!(%e, "the final look failed: what remains is unknown");
                        error.get_or_insert(e);
                        verified = false;
                    }
                }
            }
        }
        self.report(clean && !interrupted && error.is_none(), verified, interrupted, error)
    }

    /// How long to wait before the next look: the interval, or less when the
    /// grace period, the window or the deadline ends sooner.
    fn next_wait(&self, now: Duration, window_end: Duration) -> Duration {
        let mut wait = self.policy.interval;
        for boundary in [Some(self.policy.grace), Some(window_end), self.policy.deadline].into_iter().flatten() {
            if boundary > now {
                wait = wait.min(boundary - now);
            }
        }
        wait.max(Duration::from_millis(1))
    }

    /// Destroys the current look's attemptable targets. Returns whether a socket
    /// an earlier pass had missed got destroyed (progress), the error that stopped
    /// the pass, and whether a cancel request cut it short.
    fn destroy_pass(&mut self) -> (bool, Option<Error>, bool) {
        let mut batch = std::mem::take(&mut self.look.targets);
        // Sockets the kernel refused before are not tried again (in place: no second copy).
        let mut left: Vec<TcpSocket> = batch.extract_if(.., |s| self.refused.contains(&s.cookie())).collect();
        let mut pass = self.engine.destroy(&batch, self.cancel, self.audit);
        if let Some(Err(e)) = self.audit.map(AuditLog::sync) {
            pass.error.get_or_insert(e);
        }
        let at_ms = u32::try_from(self.ms()).unwrap_or(u32::MAX);
        let sent = pass.outcomes.len();
        let cut = pass.error.is_none() && sent < batch.len();
        let mut outcome_of: Vec<Option<Outcome>> = vec![None; batch.len()];
        for (i, o) in pass.outcomes {
            outcome_of[i] = Some(o);
        }
        let meta = |outcome| Meta { outcome, pass: self.passes, at_ms };
        let mut progress = false;
        if self.ledger.is_empty() && sent == batch.len() {
            // The usual first pass: the batch becomes the record as it is.
            self.ledger.meta = outcome_of.iter().map(|o| meta(o.unwrap_or(Outcome::Unacknowledged))).collect();
            self.index = batch.iter().enumerate().map(|(i, s)| (s.cookie(), i as u32)).collect();
            self.refused.extend(
                batch
                    .iter()
                    .zip(&self.ledger.meta)
                    .filter(|(_, m)| matches!(m.outcome, Outcome::Failed(_)))
                    .map(|(s, _)| s.cookie()),
            );
            self.ledger.sockets = batch;
        } else {
            let new = batch
                .iter()
                .zip(&outcome_of)
                .filter(|(s, o)| o.is_some() && !self.index.contains_key(&s.cookie()))
                .count();
            self.ledger.sockets.reserve_exact(new);
            self.ledger.meta.reserve_exact(new);
            for (socket, outcome) in batch.into_iter().zip(outcome_of) {
                let Some(outcome) = outcome else {
                    left.push(socket); // not sent
                    continue;
                };
                let cookie = socket.cookie();
                if let Outcome::Failed(_) = outcome {
                    self.refused.insert(cookie);
                }
                match self.index.get(&cookie) {
                    Some(&e) => {
                        progress |= outcome == Outcome::Destroyed;
                        self.ledger.meta[e as usize] = meta(outcome);
                    }
                    None => {
                        self.index.insert(cookie, self.ledger.sockets.len() as u32);
                        self.ledger.sockets.push(socket);
                        self.ledger.meta.push(meta(outcome));
                    }
                }
            }
        }
        // What was not attempted is still a target of this look.
        self.look.targets = left;
        debug!(pass = self.passes, sent, "destroy pass");
        (progress, pass.error, cut)
    }

    /// Takes in a new look: targets that vanished without a destroy of ours
    /// go to the judge, ENOENT answers for sockets still there become
    /// `NotFound`, new arrivals are counted.
    fn observe(&mut self, look: Look) {
        let now = self.started.elapsed();
        let present: HashSet<u64> = look.targets.iter().map(TcpSocket::cookie).collect();
        let vanished: Vec<TcpSocket> = std::mem::take(&mut self.look.targets)
            .into_iter()
            .filter(|s| !present.contains(&s.cookie()) && !self.index.contains_key(&s.cookie()))
            .collect();
        if !vanished.is_empty() {
            self.judge.vanished(vanished, now.as_millis() as u64);
        }
        for s in &look.targets {
            let cookie = s.cookie();
            match self.index.get(&cookie) {
                Some(&e) => {
                    let m = &mut self.ledger.meta[e as usize];
                    if m.outcome == Outcome::AlreadyGone {
                        m.outcome = Outcome::NotFound;
                    }
                }
                None if !self.original.contains(&cookie) && self.later.insert(cookie) => self.new_during += 1,
                None => {}
            }
        }
        if !look.targets.is_empty() {
            self.last_seen = Some(now);
        }
        self.look = look;
    }

    fn dry_report(self) -> (Report, J) {
        let clean = self.look.targets.is_empty();
        self.report(clean, false, false, None)
    }

    fn report(mut self, clean: bool, verified: bool, interrupted: bool, error: Option<Error>) -> (Report, J) {
        let look = std::mem::take(&mut self.look);
        let mut s = Summary {
            matched: self.original.len(),
            new_during_kill: self.new_during,
            passes: self.passes,
            verified,
            interrupted,
            duration_ms: self.ms(),
            ..Summary::default()
        };
        for m in &self.ledger.meta {
            match m.outcome {
                Outcome::Destroyed => s.destroyed += 1,
                Outcome::AlreadyGone => s.already_gone += 1,
                Outcome::NotFound => s.not_found += 1,
                Outcome::Failed(_) => s.failed += 1,
                Outcome::Unacknowledged => s.unacknowledged += 1,
                Outcome::WouldDestroy => {}
            }
        }
        let remaining = (verified || self.policy.dry_run).then_some(look.targets);
        if let Some(rem) = remaining.as_ref() {
            let orig = rem.iter().filter(|r| self.original.contains(&r.cookie())).count();
            s.remaining = Some(rem.len());
            s.remaining_original = Some(orig);
            s.remaining_new = Some(rem.len() - orig);
        }
        let sockets = if self.policy.dry_run {
            Ledger::would_destroy(remaining.clone().unwrap_or_default())
        } else {
            std::mem::take(&mut self.ledger)
        };
        let report = Report {
            dry_run: self.policy.dry_run,
            sockets,
            remaining,
            kept: look.kept,
            unsure: look.unsure,
            summary: s,
            clean,
            last_seen_ms: self.last_seen.map(|d| d.as_millis() as u64),
            error,
        };
        (report, self.judge)
    }
}

/// Collects and classifies.
fn take_look<J: Judge>(engine: &mut Engine, query: &Query, judge: &mut J) -> Result<Look> {
    let mut sockets = engine.collect(query)?;
    let classes = judge.classify(&mut sockets)?;
    if classes.len() != sockets.len() {
        return Err(Error::Other(format!("judge classified {} of {} sockets", classes.len(), sockets.len())));
    }
    let mut look = Look::default();
    for (socket, class) in sockets.into_iter().zip(classes) {
        match class {
            Class::Target => look.targets.push(socket),
            Class::Ignore => {}
            Class::Keep(reason) => look.kept.push(Spared { socket, reason }),
            Class::Unsure(reason) => look.unsure.push(Spared { socket, reason }),
        }
    }
    Ok(look)
}
