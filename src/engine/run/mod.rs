//! The one enforcement loop: look (collect + classify), destroy, look again —
//! used by `kill` (passes, `--for`) and by the HAProxy mode (grace, settle,
//! deadline, window) alike.
//!
//! The rules live in [`machine`] (pure, tested without root in
//! milliseconds); [`Run`] drives them against a [`Kernel`] and a [`Clock`]:
//! the real ones in production ([`LiveKernel`], [`WallClock`]), fakes in the
//! unit tests.
//!
//! A run never loses its report: whatever stops it after the first destroy (an
//! error, a signal, a deadline), [`Run::finish`] returns the [`RunReport`] of
//! what was done, with the error in it. Only [`Run::start`] fails outright,
//! and it does so before anything is destroyed.

pub mod machine;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::ser::Serializer;
use serde::Serialize;
use tracing::{debug, warn};

pub use machine::{End, Event, Looked, Machine, Pass, Step};
#[cfg(any(test, feature = "testing"))]
pub use machine::Phase;

use super::destroy::DestroyPass;
use super::classify::{Class, Classifier};
use super::ledger::{Ledger, Spared};
use super::policy::Policy;
use super::verdict::{Facts, Verdict};
use super::{Engine, Query};
use crate::audit::AuditLog;
use crate::cancel::Cancel;
use crate::diag::Outcome;
use crate::error::{Error, Result};
use crate::socket::TcpSocket;

/// The kernel as the loop sees it: one look, and one destroy pass.
pub trait Kernel {
    /// Every socket the run's query matches now.
    fn collect(&mut self) -> Result<Vec<TcpSocket>>;

    /// Destroys `sockets` as collected (cookie-exact), stopping before a batch
    /// when `cancel` is raised, recording destroyed sockets in `audit`.
    fn destroy(&mut self, sockets: &[TcpSocket], cancel: Option<&Cancel>, audit: Option<&AuditLog>) -> DestroyPass;
}

/// The real kernel: an [`Engine`] and a [`Query`].
pub struct LiveKernel<'a> {
    /// The sock_diag session.
    pub engine: &'a mut Engine,
    /// What to look for.
    pub query: &'a Query,
}

impl Kernel for LiveKernel<'_> {
    fn collect(&mut self) -> Result<Vec<TcpSocket>> {
        self.engine.collect(self.query)
    }

    fn destroy(&mut self, sockets: &[TcpSocket], cancel: Option<&Cancel>, audit: Option<&AuditLog>) -> DestroyPass {
        self.engine.destroy(sockets, cancel, audit)
    }
}

/// Time as the loop sees it.
pub trait Clock {
    /// Time since the run started.
    fn now(&self) -> Duration;

    /// Sleeps `d`, or less when `cancel` is raised.
    fn sleep(&mut self, d: Duration, cancel: Option<&Cancel>);
}

/// The real clock, started when created.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    started: Instant,
}

impl WallClock {
    /// A clock whose zero is now.
    pub fn start() -> WallClock {
        WallClock { started: Instant::now() }
    }
}

impl Clock for WallClock {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn sleep(&mut self, d: Duration, cancel: Option<&Cancel>) {
        match cancel {
            Some(c) => {
                c.sleep(d);
            }
            None => std::thread::sleep(d),
        }
    }
}

/// A question the caller asked the sockets' owner before the loop (HAProxy's
/// `wait`), polled between looks: grace lasts until it is answered (or grace ends).
pub trait Awaited {
    /// `None` while pending; `Some(ends_grace)` once answered (`true`: the
    /// owner says it is done, so the rest of the grace period is not waited for).
    fn poll(&mut self) -> Option<bool>;
}

/// Counts of a [`RunReport`]. Every socket is counted once: `matched` +
/// `new_during_kill` = the sockets in `sockets` + those never attempted.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Targets at the first look.
    pub matched: usize,
    /// Targets that appeared only in a later look (connections made during the run).
    pub new_during_kill: usize,
    /// Of those, targets first seen after the first destroy (an owner reconnecting).
    pub appeared_after_first_destroy: usize,
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
    /// Sockets left alone because they could not be attributed, at the last look.
    pub ambiguous: usize,
    /// Destroy passes sent.
    pub passes: u32,
    /// A look after the last destroy tells what remains.
    pub verified: bool,
    /// A signal (or the caller's [`Cancel`]) stopped the run early.
    pub interrupted: bool,
    /// The verdict: `verdict` (its word: `clean`, `remaining`, ...) and
    /// `clean` (nothing matching remains, nothing ambiguous) in JSON, both from this one value.
    #[serde(flatten, serialize_with = "super::verdict::verdict_and_clean")]
    pub verdict: Verdict,
    /// Wall time of the run.
    pub duration_ms: u64,
}

impl Summary {
    /// Destroys that did not end a socket the run knows of: refused, not
    /// acknowledged, or not reaching a live socket (`failed` in the metrics
    /// and the HAProxy summary).
    pub fn unsuccessful(&self) -> usize {
        self.failed + self.unacknowledged + self.not_found
    }
}

/// What a run did.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// Nothing was destroyed on purpose.
    pub dry_run: bool,
    /// Every target acted on, once each (a dry run lists what it would destroy).
    pub sockets: Ledger,
    /// Targets still there at the end; `None` when not verified.
    pub remaining: Option<Vec<TcpSocket>>,
    /// Sockets left alone on purpose at the last look (another server's).
    #[serde(skip)]
    pub other_server: Vec<Spared>,
    /// Sockets left alone because they could not be attributed, at the last look.
    #[serde(skip)]
    pub ambiguous: Vec<Spared>,
    /// Counts, and the verdict.
    pub summary: Summary,
    /// Why the loop ended.
    #[serde(skip)]
    pub end: End,
    /// The verdict in plain words (why it is not clean, when it is not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict_reason: Option<String>,
    /// When a target was last seen, in ms from the start.
    #[serde(skip)]
    pub last_seen_ms: Option<u64>,
    /// What stopped the run early, if an error did.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "error_text")]
    pub error: Option<Error>,
    /// The error's kind, for scripts (`error_kind`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<&'static str>,
    /// The classifier's last doubt (`Classifier::doubt`) when the run ended: the
    /// sockets' owner still named targets that no look found.
    #[serde(skip)]
    pub doubt: Option<String>,
}

fn error_text<S: Serializer>(e: &Option<Error>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match e {
        Some(e) => s.serialize_str(&e.to_string()),
        None => s.serialize_none(),
    }
}

impl RunReport {
    /// Whether anything may have been destroyed (acknowledged or not).
    pub fn destroyed_any(&self) -> bool {
        self.summary.destroyed + self.summary.unacknowledged > 0
    }

    /// The verdict, computed once when the report was made.
    pub fn verdict(&self) -> Verdict {
        self.summary.verdict
    }

    /// Sets the verdict (and everything derived from it) from the report's
    /// facts; `changed_elsewhere`: the caller changed state outside the
    /// kernel (HAProxy's server), which counts as done.
    pub fn conclude(&mut self, changed_elsewhere: bool) {
        let all_acknowledged = self.sockets.count(|o| !matches!(o, Outcome::Destroyed | Outcome::AlreadyGone)) == 0;
        let facts = Facts {
            end: self.end,
            error: self.error.is_some(),
            remaining: self.summary.remaining,
            ambiguous: self.ambiguous.len(),
            doubted: self.doubt.is_some(),
            all_acknowledged,
            done: self.destroyed_any() || changed_elsewhere,
        };
        let v = Verdict::of(&facts);
        self.summary.verdict = v;
        self.summary.interrupted = self.end == End::Interrupted;
        self.error_kind = self.error.as_ref().map(Error::kind);
        self.verdict_reason = self.explain();
    }

    /// Why the verdict is not clean, in plain words; says when destroyed UDP
    /// sockets are among what remains (a destroy disconnects a UDP socket,
    /// and one bound to its port stays there).
    fn explain(&self) -> Option<String> {
        let udp_left = self
            .remaining
            .as_ref()
            .map_or(0, |r| r.iter().filter(|s| s.is_udp() && self.sockets.contains(s.cookie())).count());
        let why = self.explain_verdict();
        match why {
            Some(w) if udp_left > 0 => Some(format!(
                "{w}; {udp_left} of them UDP sockets a destroy disconnected (their owner got ECONNABORTED) but that stay bound to their port: only their owner can close them"
            )),
            other => other,
        }
    }

    fn explain_verdict(&self) -> Option<String> {
        let s = &self.summary;
        let remaining = s.remaining.unwrap_or(0);
        let when = |ms: Option<u64>| ms.map_or(String::new(), |t| format!(", the last seen at {t} ms"));
        match s.verdict {
            Verdict::Clean => None,
            Verdict::Unverified => Some("not verified (--no-verify): every destroy was acknowledged".into()),
            Verdict::Remaining if self.dry_run => Some(format!("{remaining} matching sockets now (dry run)")),
            Verdict::Remaining | Verdict::Unsettled if self.end == End::Deadline => Some(format!(
                "the deadline came while targets kept appearing: {} appeared after the first destroy{}; {remaining} at the last look",
                s.appeared_after_first_destroy,
                when(self.last_seen_ms)
            )),
            Verdict::Remaining if self.end == End::OutOfPasses => {
                Some(format!("{remaining} sockets still match after {} destroy passes", s.passes))
            }
            Verdict::Remaining => Some(format!("{remaining} sockets still match")),
            Verdict::Unsettled => Some("no target at the last look, but not quiet for the settle period".into()),
            Verdict::Ambiguous => {
                let left = (!self.ambiguous.is_empty()).then(|| {
                    format!("{} sockets could not be attributed and were left alone (see ambiguous)", self.ambiguous.len())
                });
                Some(left.into_iter().chain(self.doubt.clone()).collect::<Vec<_>>().join("; "))
            }
            Verdict::Interrupted { .. } => Some("interrupted by a signal".into()),
            Verdict::Failed { .. } => Some(
                self.error.as_ref().map_or_else(|| "stopped by an error".to_string(), |e| format!("stopped: {e}")),
            ),
        }
    }
}

/// One look: the targets, and what was left alone.
#[derive(Debug, Default)]
struct Look {
    targets: Vec<TcpSocket>,
    other_server: Vec<Spared>,
    ambiguous: Vec<Spared>,
}

/// A run of the loop. [`Run::start`] takes the first look (errors there mean
/// nothing was done); the caller may then act (e.g. send HAProxy its
/// commands); [`Run::finish`] enforces and reports.
pub struct Run<'a, K: Kernel, C: Clock, J: Classifier> {
    kernel: K,
    clock: C,
    classifier: J,
    /// The loop's rules and the policy they follow (built once, in [`Run::start`]).
    machine: Machine,
    cancel: Option<&'a Cancel>,
    audit: Option<&'a AuditLog>,
    look: Look,
    /// Targets of the first look.
    original: HashSet<u64>,
    /// Targets first seen later (attempted or not).
    later: HashSet<u64>,
    appeared_after_first_destroy: usize,
    ledger: Ledger,
    /// Sockets not to try again: the kernel refused them for good, or a
    /// destroy succeeded and could not end them (a UDP socket bound to its
    /// port stays, disconnected: another destroy only hands its owner another
    /// ECONNABORTED).
    refused: HashSet<u64>,
    error: Option<Error>,
    /// Destroys since the last look: what remains is not known.
    stale: bool,
    /// The classifier's answer to the last [`Step::Confirm`].
    doubt: Option<String>,
}

impl<'a, K: Kernel, C: Clock, J: Classifier> Run<'a, K, C, J> {
    /// Takes the first look. Fails (nothing done) on a collect or classifier error,
    /// or when more targets than `policy.max` match.
    pub fn start(
        mut kernel: K,
        clock: C,
        policy: Policy,
        mut classifier: J,
        cancel: Option<&'a Cancel>,
        audit: Option<&'a AuditLog>,
    ) -> Result<Run<'a, K, C, J>> {
        let look = take_look(&mut kernel, &mut classifier)?;
        if let Some(max) = policy.max.filter(|m| look.targets.len() > *m) {
            return Err(Error::TooMany { matched: look.targets.len(), max });
        }
        let original = look.targets.iter().map(TcpSocket::cookie).collect();
        Ok(Run {
            kernel,
            clock,
            classifier,
            machine: Machine::new(policy, false),
            cancel,
            audit,
            look,
            original,
            later: HashSet::new(),
            appeared_after_first_destroy: 0,
            ledger: Ledger::default(),
            refused: HashSet::new(),
            error: None,
            stale: false,
            doubt: None,
        })
    }

    /// Targets at the first look.
    pub fn matched(&self) -> usize {
        self.original.len()
    }

    /// The classifier, for callers that act between start and finish.
    pub fn classifier_mut(&mut self) -> &mut J {
        &mut self.classifier
    }

    /// Ends the run without destroying anything: the caller hit `error`
    /// between [`Run::start`] and [`Run::finish`]. The report holds the first look.
    pub fn stop(mut self, error: Error) -> (RunReport, J) {
        let end = if matches!(error, Error::Interrupted(_)) { End::Interrupted } else { End::Failed };
        if end == End::Failed {
            self.error = Some(error);
        }
        self.report(end)
    }

    /// Enforces under the policy until clean, out of passes, past the deadline,
    /// cancelled or stopped by an error, and reports. Returns the classifier too.
    pub fn finish(self) -> (RunReport, J) {
        self.finish_awaiting(None)
    }

    /// [`Run::finish`], with the caller's pending question polled between
    /// looks: grace lasts until it is answered.
    pub fn finish_awaiting(mut self, mut awaited: Option<&mut dyn Awaited>) -> (RunReport, J) {
        if awaited.is_some() {
            self.machine.await_answer();
        }
        let first = self.looked();
        let mut step = self.machine.on(self.clock.now(), Event::Started(first));
        let mut cancel_seen = 0;
        loop {
            if let Some(ends_grace) = awaited.as_deref_mut().and_then(Awaited::poll) {
                awaited = None;
                step = self.machine.on(self.clock.now(), Event::Answered { ends_grace });
            }
            let requests = self.cancel.map_or(0, Cancel::requests);
            if requests > cancel_seen {
                cancel_seen = requests;
                step = self.machine.on(self.clock.now(), Event::Cancelled { abandon: requests >= 2 });
            }
            debug!(?step, phase = ?self.machine.phase(), "loop");
            step = match step {
                Step::Finish(End::DryRun) => {
                    // What the owner names beyond the look is part of a dry run's answer.
                    if let Err(e) = self.confirm() {
                        if !matches!(e, Error::Interrupted(_)) {
                            self.error.get_or_insert(e);
                        }
                    }
                    return self.report(End::DryRun);
                }
                Step::Finish(end) => return self.report(end),
                Step::Confirm => match self.confirm() {
                    Ok(doubt) => self.machine.on(self.clock.now(), Event::Confirmed { doubt }),
                    Err(Error::Interrupted(_)) => self.machine.on(self.clock.now(), Event::Cancelled { abandon: false }),
                    Err(e) => {
                        self.error = Some(e);
                        self.machine.on(self.clock.now(), Event::LookFailed)
                    }
                },
                Step::FinalLook(end) => {
                    self.final_look();
                    return self.report(end);
                }
                Step::LookAfter(d) => {
                    self.clock.sleep(d, self.cancel);
                    if self.cancel.map_or(0, Cancel::requests) > cancel_seen {
                        continue; // a cancel cut the sleep short: taken in at the top
                    }
                    self.look_step()
                }
                Step::Look => self.look_step(),
                Step::Destroy => {
                    let pass = self.destroy_pass();
                    self.machine.on(self.clock.now(), Event::Destroyed(pass))
                }
            };
        }
    }

    fn looked(&self) -> Looked {
        let targets = self.look.targets.len();
        let refused = self.look.targets.iter().filter(|s| self.refused.contains(&s.cookie())).count();
        Looked { targets, attemptable: targets - refused }
    }

    fn look_step(&mut self) -> Step {
        match take_look(&mut self.kernel, &mut self.classifier) {
            Ok(look) => {
                self.observe(look);
                let looked = self.looked();
                self.machine.on(self.clock.now(), Event::Looked(looked))
            }
            Err(Error::Interrupted(_)) => self.machine.on(self.clock.now(), Event::Cancelled { abandon: false }),
            Err(e) => {
                self.error = Some(e);
                self.machine.on(self.clock.now(), Event::LookFailed)
            }
        }
    }

    /// Asks the classifier whether its owner still names targets no look found;
    /// keeps the answer for the verdict.
    fn confirm(&mut self) -> Result<bool> {
        self.doubt = self.classifier.doubt()?;
        if let Some(why) = &self.doubt {
            debug!(%why, "the owner disagrees with quiet");
        }
        Ok(self.doubt.is_some())
    }

    /// The look after the last destroy, when the loop ended without one.
    fn final_look(&mut self) {
        match take_look(&mut self.kernel, &mut self.classifier) {
            Ok(look) => self.observe(look),
            Err(Error::Interrupted(_)) => {}
            Err(e) => {
                warn!(%e, "the final look failed: what remains is unknown");
                self.error.get_or_insert(e);
            }
        }
    }

    /// Destroys the current look's attemptable targets.
    fn destroy_pass(&mut self) -> Pass {
        let mut batch = std::mem::take(&mut self.look.targets);
        // Sockets the kernel refused before are not tried again (in place: no second copy).
        let mut left: Vec<TcpSocket> = batch.extract_if(.., |s| self.refused.contains(&s.cookie())).collect();
        self.stale = true;
        let mut pass = self.kernel.destroy(&batch, self.cancel, self.audit);
        if let Some(Err(e)) = self.audit.map(AuditLog::sync) {
            pass.error.get_or_insert(e);
        }
        let at_ms = u32::try_from(self.clock.now().as_millis()).unwrap_or(u32::MAX);
        let sent = pass.outcomes.len();
        let cut = pass.error.is_none() && sent < batch.len();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        for (i, o) in pass.outcomes {
            if let Some(slot) = outcomes.get_mut(i) {
                *slot = Some(o);
            }
            match (o, batch.get(i)) {
                (Outcome::Failed(_), Some(s)) => {
                    self.refused.insert(s.cookie());
                }
                (Outcome::Destroyed, Some(s)) if s.is_udp() => {
                    self.refused.insert(s.cookie());
                }
                _ => {}
            }
        }
        let recorded = self.ledger.record(batch, outcomes, self.machine.passes(), at_ms);
        left.extend(recorded.unsent);
        // What was not attempted is still a target of this look.
        self.look.targets = left;
        debug!(pass = self.machine.passes(), sent, "destroy pass");
        let failed = pass.error.is_some();
        if let Some(e) = pass.error {
            self.error.get_or_insert(e);
        }
        Pass { progress: recorded.progress, failed, cut }
    }

    /// Takes in a new look: targets that vanished without a destroy of ours
    /// go to the classifier, ENOENT answers for sockets still there become
    /// `NotFound`, new arrivals are counted.
    fn observe(&mut self, look: Look) {
        let now = self.clock.now();
        // A target judged otherwise now (ambiguous, another server's) is still
        // there: only one gone from the look altogether was closed.
        let spared = look.other_server.iter().chain(&look.ambiguous).map(|s| s.socket.cookie());
        let present: HashSet<u64> = look.targets.iter().map(TcpSocket::cookie).chain(spared).collect();
        let vanished: Vec<TcpSocket> = std::mem::take(&mut self.look.targets)
            .into_iter()
            .filter(|s| !present.contains(&s.cookie()) && !self.ledger.contains(s.cookie()))
            .collect();
        if !vanished.is_empty() {
            self.classifier.vanished(vanished, now.as_millis() as u64);
        }
        let after_first_destroy = self.machine.first_destroy().is_some();
        for s in &look.targets {
            let cookie = s.cookie();
            if self.ledger.contains(cookie) {
                self.ledger.seen_again(cookie);
            } else if !self.original.contains(&cookie) && self.later.insert(cookie) && after_first_destroy {
                self.appeared_after_first_destroy += 1;
            }
        }
        self.look = look;
        self.stale = false;
    }

    fn report(mut self, end: End) -> (RunReport, J) {
        if end == End::PassTooLarge && self.error.is_none() {
            let count = self.looked().attemptable;
            self.error = Some(Error::PassTooLarge { count, max: self.machine.policy().max.unwrap_or(0) });
        }
        // Destroys after the last look, and no final look: what remains is unknown.
        let verified = !self.stale;
        let look = std::mem::take(&mut self.look);
        let dry_run = self.machine.policy().dry_run;
        let mut s = Summary {
            matched: self.original.len(),
            new_during_kill: self.later.len(),
            appeared_after_first_destroy: self.appeared_after_first_destroy,
            destroyed: 0,
            already_gone: 0,
            not_found: 0,
            failed: 0,
            unacknowledged: 0,
            remaining: None,
            remaining_original: None,
            remaining_new: None,
            ambiguous: look.ambiguous.len(),
            passes: self.machine.passes(),
            verified: verified && !dry_run,
            interrupted: false,
            verdict: Verdict::Failed { done: false },
            duration_ms: self.clock.now().as_millis() as u64,
        };
        for e in self.ledger.iter() {
            match e.outcome {
                Outcome::Destroyed => s.destroyed += 1,
                Outcome::AlreadyGone => s.already_gone += 1,
                Outcome::NotFound => s.not_found += 1,
                Outcome::Failed(_) => s.failed += 1,
                Outcome::Unacknowledged => s.unacknowledged += 1,
                Outcome::WouldDestroy => {}
            }
        }
        let remaining = (verified || dry_run).then_some(look.targets);
        if let Some(rem) = remaining.as_ref() {
            let orig = rem.iter().filter(|r| self.original.contains(&r.cookie())).count();
            s.remaining = Some(rem.len());
            s.remaining_original = Some(orig);
            s.remaining_new = Some(rem.len() - orig);
        }
        let sockets = if dry_run {
            Ledger::would_destroy(remaining.clone().unwrap_or_default())
        } else {
            std::mem::take(&mut self.ledger)
        };
        let mut report = RunReport {
            dry_run,
            sockets,
            remaining,
            other_server: look.other_server,
            ambiguous: look.ambiguous,
            summary: s,
            end,
            verdict_reason: None,
            last_seen_ms: self.machine.last_seen().map(|d| d.as_millis() as u64),
            error: self.error,
            error_kind: None,
            doubt: self.doubt,
        };
        report.conclude(false);
        (report, self.classifier)
    }
}

/// Collects and classifies.
fn take_look<K: Kernel, J: Classifier>(kernel: &mut K, classifier: &mut J) -> Result<Look> {
    let mut sockets = kernel.collect()?;
    let classes = classifier.classify(&mut sockets)?;
    if classes.len() != sockets.len() {
        return Err(Error::Internal(format!("the classifier classified {} of {} sockets", classes.len(), sockets.len())));
    }
    let mut look = Look::default();
    for (socket, class) in sockets.into_iter().zip(classes) {
        match class {
            Class::Target => look.targets.push(socket),
            Class::Ignore => {}
            Class::OtherServer(reason) => look.other_server.push(Spared { socket, reason }),
            Class::Ambiguous(reason) => look.ambiguous.push(Spared { socket, reason }),
        }
    }
    Ok(look)
}
