//! The rules of the enforcement loop, as a pure state machine: no kernel, no
//! clock, no I/O. The driver ([`super::Run`]) feeds it [`Event`]s stamped with
//! the time since the start and does the [`Step`] it answers.
//!
//! Phases: the first look, then **grace** (nothing is destroyed; the caller's
//! pending question, HAProxy's `wait`, may be answered meanwhile), the
//! **window** (`--for`: every look's targets are destroyed), **passes**
//! (destroy, look again, while targets remain and passes are left), **settle**
//! (looks at the interval until quiet), **done**. The deadline and a cancel
//! end any phase.
//!
//! The rule users trust most: *quiet* is measured from the last action — the
//! last destroy and the last look that saw a target, whichever is later — so
//! a run is clean only after `settle` of empty looks following its last
//! destroy (a server whose owner reconnects after each destroy is never
//! called clean early).

use std::time::Duration;

use crate::engine::policy::{Policy, MAX_PASSES};
pub use crate::engine::verdict::End;

/// Where the loop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the first look.
    FirstLook,
    /// Waiting for the owner to close (nothing destroyed yet).
    Grace,
    /// Inside `--for`: every target a look finds is destroyed.
    Window,
    /// Destroying and looking again.
    Passes,
    /// Looking at the interval until quiet.
    Settle,
    /// Over.
    Done(End),
}

/// What the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Look now.
    Look,
    /// Sleep this long (a cancel cuts it short), then look.
    LookAfter(Duration),
    /// Destroy the attemptable targets of the last look.
    Destroy,
    /// Look once more (what remains after the last destroy), then end.
    FinalLook(End),
    /// The run would end quiet: ask the classifier whether the sockets' owner
    /// still names targets no look found, and answer [`Event::Confirmed`].
    Confirm,
    /// End now.
    Finish(End),
}

/// What a look found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Looked {
    /// Targets (including those the kernel refused before).
    pub targets: usize,
    /// Targets a destroy may be sent for (not refused before).
    pub attemptable: usize,
}

/// What a destroy pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pass {
    /// It destroyed a socket an earlier pass had missed (not found, though alive).
    pub progress: bool,
    /// An error stopped it (outcomes before the error stand).
    pub failed: bool,
    /// A cancel request stopped it before every request was sent.
    pub cut: bool,
}

/// Something that happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The first look.
    Started(Looked),
    /// A later look.
    Looked(Looked),
    /// A destroy pass ended.
    Destroyed(Pass),
    /// The caller's pending question was answered; `ends_grace`: the owner says
    /// it is done, so waiting longer is pointless.
    Answered {
        /// End the grace period now.
        ends_grace: bool,
    },
    /// A cancel request; `abandon` (a second one): skip even the last look.
    Cancelled {
        /// Skip the final look too.
        abandon: bool,
    },
    /// A look failed (the driver holds the error).
    LookFailed,
    /// The answer to [`Step::Confirm`]; `doubt`: the owner still names
    /// targets, so quiet counts again from now.
    Confirmed {
        /// The owner disagrees with quiet.
        doubt: bool,
    },
}

/// The loop's state and rules.
#[derive(Debug, Clone)]
pub struct Machine {
    policy: Policy,
    phase: Phase,
    look: Looked,
    /// Destroys since the last look: its targets no longer tell what remains.
    stale: bool,
    last_seen: Option<Duration>,
    last_destroy: Option<Duration>,
    first_destroy: Option<Duration>,
    passes: u32,
    passes_after_window: u32,
    last_progress: bool,
    awaiting: bool,
    grace_end: Duration,
    cancelled: bool,
    abandoned: bool,
    /// The run ended with destroys since the last look: one more look is owed.
    final_look_owed: bool,
}

impl Machine {
    /// A machine for `policy`; `awaiting`: the caller has a question pending
    /// (grace lasts until it is answered or grace ends).
    pub fn new(policy: Policy, awaiting: bool) -> Machine {
        let grace_end = policy.grace;
        Machine {
            policy,
            phase: Phase::FirstLook,
            look: Looked::default(),
            stale: false,
            last_seen: None,
            last_destroy: None,
            first_destroy: None,
            passes: 0,
            passes_after_window: 0,
            last_progress: false,
            awaiting,
            grace_end,
            cancelled: false,
            abandoned: false,
            final_look_owed: false,
        }
    }

    /// The caller has a question pending (grace lasts until it is answered or grace ends).
    pub fn await_answer(&mut self) {
        self.awaiting = true;
    }

    /// The policy it follows.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Destroy passes sent.
    pub fn passes(&self) -> u32 {
        self.passes
    }

    /// When a look last saw a target.
    pub fn last_seen(&self) -> Option<Duration> {
        self.last_seen
    }

    /// When the first destroy pass ended.
    pub fn first_destroy(&self) -> Option<Duration> {
        self.first_destroy
    }

    /// Takes in `event`, which happened at `now` (since the start), and says what to do.
    pub fn on(&mut self, now: Duration, event: Event) -> Step {
        if let Phase::Done(end) = self.phase {
            // The look after the last destroy is owed until a second signal abandons it:
            // the signal that ended the run arrives here too, and must not skip it.
            if self.final_look_owed && !matches!(event, Event::Cancelled { abandon: true }) {
                return Step::FinalLook(end);
            }
            self.final_look_owed = false;
            return Step::Finish(end);
        }
        match event {
            Event::Started(look) => {
                self.look = look;
                if look.targets > 0 {
                    self.last_seen = Some(now);
                }
                if self.policy.dry_run {
                    return self.finish(End::DryRun);
                }
            }
            Event::Looked(look) => {
                self.look = look;
                self.stale = false;
                if look.targets > 0 {
                    self.last_seen = Some(now);
                }
            }
            Event::Destroyed(pass) => {
                self.stale = true;
                self.last_destroy = Some(now);
                self.first_destroy.get_or_insert(now);
                self.last_progress = pass.progress;
                if pass.cut {
                    self.cancelled = true;
                }
                if pass.failed {
                    return self.end(End::Failed);
                }
                if !self.policy.verify && !self.cancelled {
                    return self.finish(End::NotVerified);
                }
            }
            Event::Answered { ends_grace } => {
                self.awaiting = false;
                if ends_grace {
                    self.grace_end = self.grace_end.min(now);
                }
            }
            Event::Cancelled { abandon } => {
                self.cancelled = true;
                self.abandoned |= abandon;
            }
            Event::LookFailed => return self.end(End::Failed),
            Event::Confirmed { doubt: false } => return self.finish(End::Quiet),
            Event::Confirmed { doubt: true } => {
                // A sighting: quiet counts again from now; look after an interval
                // (with no settle period, asking again at once would spin).
                self.last_seen = Some(now);
                return match self.decide(now) {
                    Step::Confirm => Step::LookAfter(self.wait(now, None)),
                    step => step,
                };
            }
        }
        self.decide(now)
    }

    fn finish(&mut self, end: End) -> Step {
        self.phase = Phase::Done(end);
        Step::Finish(end)
    }

    /// Ends the run; with destroys since the last look (and verification on,
    /// and not abandoned) one more look says what remains.
    fn end(&mut self, end: End) -> Step {
        if self.stale && self.policy.verify && !self.abandoned {
            self.phase = Phase::Done(end);
            self.final_look_owed = true;
            Step::FinalLook(end)
        } else {
            self.finish(end)
        }
    }

    /// Time since the last action (destroy, or a look that saw a target).
    fn quiet(&self, now: Duration) -> Duration {
        let last = self.last_seen.max(self.last_destroy).unwrap_or(Duration::ZERO);
        now.saturating_sub(last)
    }

    fn window_end(&self) -> Duration {
        self.policy.window.unwrap_or(Duration::ZERO)
    }

    /// The interval, or less when a boundary (grace, window, deadline, the end
    /// of settle) comes sooner; never zero.
    fn wait(&self, now: Duration, also: Option<Duration>) -> Duration {
        let mut wait = self.policy.interval;
        let bounds = [Some(self.grace_end), Some(self.window_end()), self.policy.deadline, also.map(|d| now + d)];
        for boundary in bounds.into_iter().flatten() {
            if boundary > now {
                wait = wait.min(boundary - now);
            }
        }
        wait.max(Duration::from_millis(1))
    }

    fn decide(&mut self, now: Duration) -> Step {
        if self.cancelled {
            return self.end(End::Interrupted);
        }
        if self.policy.deadline.is_some_and(|d| now >= d) {
            return self.end(End::Deadline);
        }
        let in_window = now < self.window_end();
        let settle = self.policy.settle;
        if self.stale {
            // A kill verifies at once; a run that waits for quiet (or is in a
            // window) looks again after an interval.
            return if settle.is_zero() && !in_window { Step::Look } else { Step::LookAfter(self.wait(now, None)) };
        }
        if now < self.grace_end {
            self.phase = Phase::Grace;
            let quiet = self.look.targets == 0 && self.quiet(now) >= settle;
            if quiet && !self.awaiting && !in_window {
                return Step::Confirm;
            }
            return Step::LookAfter(self.wait(now, None));
        }
        if self.look.attemptable > 0 {
            if !in_window {
                if let Some(n) = self.policy.passes {
                    let extend = self.last_progress && self.passes_after_window < MAX_PASSES;
                    if self.passes_after_window >= n && !extend {
                        return self.finish(End::OutOfPasses);
                    }
                }
            }
            if self.policy.max.is_some_and(|m| self.look.attemptable > m) {
                return self.finish(End::PassTooLarge);
            }
            self.passes += 1;
            if in_window {
                self.phase = Phase::Window;
            } else {
                self.passes_after_window += 1;
                self.phase = Phase::Passes;
            }
            return Step::Destroy;
        }
        if in_window {
            self.phase = Phase::Window;
            return Step::LookAfter(self.wait(now, None));
        }
        if self.look.targets > 0 {
            // Only sockets the kernel refused (or bound UDP sockets already
            // destroyed once) remain: nothing of ours will change them.
            if settle.is_zero() {
                return self.finish(End::OutOfPasses);
            }
            self.phase = Phase::Settle;
            return Step::LookAfter(self.wait(now, None));
        }
        let quiet = self.quiet(now);
        if quiet >= settle {
            return Step::Confirm;
        }
        self.phase = Phase::Settle;
        Step::LookAfter(self.wait(now, Some(settle - quiet)))
    }
}
