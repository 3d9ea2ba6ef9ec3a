//! The one verdict of a run, computed once: the exit code, `clean`, the
//! summary's `verdict`, the metrics and the audit log's `end` event all come
//! from [`Verdict`], so they cannot disagree.

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// A look after the last action found no target, `settle` after it, the window over.
    Quiet,
    /// Targets remain and no pass is left (or only sockets the kernel refused remain).
    OutOfPasses,
    /// The deadline came first.
    Deadline,
    /// The first pass was sent and no look followed (`--no-verify`).
    NotVerified,
    /// A cancel request (a signal) stopped the run.
    Interrupted,
    /// An error stopped the run (the driver holds it).
    Failed,
    /// A pass larger than `max` would have been sent; it was not.
    PassTooLarge,
    /// A dry run: one look, nothing destroyed.
    DryRun,
}

/// What a run's end means for its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing matching remains: a look after the last destroy (after the
    /// settle period) found no target, and nothing was left alone as ambiguous.
    Clean,
    /// Targets remain at the end (a dry run: targets exist now).
    Remaining,
    /// No target at the last look, but targets kept appearing until the
    /// deadline: the run never saw `settle` of quiet.
    Unsettled,
    /// No target remains, but sockets the run could not attribute were left
    /// alone (they may be the target's).
    Ambiguous,
    /// `--no-verify`: every destroy was acknowledged; what remains was not looked at.
    Unverified,
    /// A signal stopped the run; `done`: something was destroyed or changed first.
    Interrupted {
        /// Something was destroyed (or changed elsewhere, e.g. in HAProxy) before.
        done: bool,
    },
    /// An error stopped the run; `done`: something was destroyed or changed first.
    Failed {
        /// Something was destroyed (or changed elsewhere, e.g. in HAProxy) before.
        done: bool,
    },
}

/// What the verdict is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// Why the loop ended.
    pub end: End,
    /// An error is recorded (from the loop, or a record written afterwards).
    pub error: bool,
    /// Targets at the last look; `None` when no look followed the last destroy.
    pub remaining: Option<usize>,
    /// Sockets left alone because they could not be attributed, at the last look.
    pub ambiguous: usize,
    /// The sockets' owner still named targets no look found when the run ended
    /// (the classifier's `doubt`).
    pub doubted: bool,
    /// Every destroy was acknowledged (destroyed, or already gone).
    pub all_acknowledged: bool,
    /// Something was destroyed, or changed elsewhere (HAProxy's server state).
    pub done: bool,
}

impl Verdict {
    /// The one rule.
    pub fn of(f: &Facts) -> Verdict {
        if f.error || matches!(f.end, End::Failed | End::PassTooLarge) {
            return Verdict::Failed { done: f.done };
        }
        if f.end == End::Interrupted {
            return Verdict::Interrupted { done: f.done };
        }
        match f.remaining {
            None if f.end == End::NotVerified && f.all_acknowledged && f.ambiguous == 0 && !f.doubted => {
                Verdict::Unverified
            }
            None => Verdict::Remaining,
            Some(n) if n > 0 => Verdict::Remaining,
            Some(_) if f.ambiguous > 0 || f.doubted => Verdict::Ambiguous,
            // No target at the final look, but the run did not see settle of quiet.
            Some(_) if f.end == End::Deadline => Verdict::Unsettled,
            // Quiet, a dry run, out of passes or unverified with nothing left at the last look
            // (the ends that are failures returned above).
            Some(_) => Verdict::Clean,
        }
    }

    /// The same run after an error in a record written at its end (metrics,
    /// audit `end`): failed, and whether anything was done stays as it was.
    pub fn after_late_error(self, done: bool) -> Verdict {
        match self {
            Verdict::Failed { .. } => self,
            _ => Verdict::Failed { done },
        }
    }

    /// The documented exit code: 0 nothing matching remains; 1 something
    /// does, or an error or signal came after something was done; 2 an error
    /// or signal before anything was done.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Clean | Verdict::Unverified => 0,
            Verdict::Remaining | Verdict::Unsettled | Verdict::Ambiguous => 1,
            Verdict::Interrupted { done } | Verdict::Failed { done } => {
                if done {
                    1
                } else {
                    2
                }
            }
        }
    }

    /// `clean` in reports and metrics: only a verified clean end.
    pub fn clean(self) -> bool {
        self == Verdict::Clean
    }

    /// The word in JSON (`verdict`), the audit log and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Remaining => "remaining",
            Verdict::Unsettled => "unsettled",
            Verdict::Ambiguous => "ambiguous",
            Verdict::Unverified => "unverified",
            Verdict::Interrupted { .. } => "interrupted",
            Verdict::Failed { .. } => "failed",
        }
    }
}

/// Serializes a verdict as the two fields every document carries: `verdict`
/// (its word) and `clean` — one stored value, both derived from it (for a
/// `#[serde(flatten, serialize_with = ...)]` field).
pub fn verdict_and_clean<S: serde::Serializer>(v: &Verdict, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(2))?;
    m.serialize_entry("verdict", v.name())?;
    m.serialize_entry("clean", &v.clean())?;
    m.end()
}

impl serde::Serialize for Verdict {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDS: [End; 8] = [
        End::Quiet,
        End::OutOfPasses,
        End::Deadline,
        End::NotVerified,
        End::Interrupted,
        End::Failed,
        End::PassTooLarge,
        End::DryRun,
    ];

    /// Every combination of the facts: the exit code, `clean` and the name
    /// always agree, and each says what the facts say.
    #[test]
    fn every_combination_tells_one_story() {
        let mut seen = std::collections::BTreeSet::new();
        for end in ENDS {
            for error in [false, true] {
                for remaining in [None, Some(0), Some(3)] {
                    for (ambiguous, doubted) in [(0, false), (2, false), (0, true), (2, true)] {
                        for all_acknowledged in [false, true] {
                            for done in [false, true] {
                                let f = Facts { end, error, remaining, ambiguous, doubted, all_acknowledged, done };
                                let unsure = ambiguous > 0 || doubted;
                                let v = Verdict::of(&f);
                                seen.insert(v.name());
                                let code = v.exit_code();
                                // clean <=> exit 0 and verified: nothing remains, nothing ambiguous, no error.
                                assert_eq!(v.clean(), code == 0 && v != Verdict::Unverified, "{f:?} -> {v:?}");
                                if v.clean() {
                                    assert!(!error && remaining == Some(0) && !unsure, "{f:?}");
                                    assert!(matches!(
                                        end,
                                        End::Quiet | End::DryRun | End::OutOfPasses | End::NotVerified
                                    ));
                                }
                                if remaining.is_some_and(|n| n > 0) {
                                    assert_ne!(code, 0, "targets remain: {f:?} -> {v:?}");
                                }
                                if unsure {
                                    assert_ne!(code, 0, "ambiguous sockets or doubt never give exit 0: {f:?} -> {v:?}");
                                }
                                if error || matches!(end, End::Failed | End::PassTooLarge | End::Interrupted) {
                                    assert_eq!(code, if done { 1 } else { 2 }, "{f:?} -> {v:?}");
                                }
                                if end == End::Deadline && remaining == Some(0) && !unsure && !error {
                                    assert_eq!(v, Verdict::Unsettled);
                                }
                                if remaining.is_none() && !error && end == End::NotVerified {
                                    let want = if all_acknowledged && !unsure { 0 } else { 1 };
                                    assert_eq!(code, want, "{f:?}");
                                }
                                // A late error never turns a run into a success, and keeps `done`.
                                let late = v.after_late_error(done);
                                assert!(!late.clean() && late.exit_code() != 0);
                                assert_eq!(late.exit_code(), if done { 1 } else { 2 });
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(seen.len(), 7, "every verdict is reachable: {seen:?}");
    }

    #[test]
    fn exit_codes_by_verdict() {
        assert_eq!(Verdict::Clean.exit_code(), 0);
        assert_eq!(Verdict::Unverified.exit_code(), 0);
        assert_eq!(Verdict::Remaining.exit_code(), 1);
        assert_eq!(Verdict::Unsettled.exit_code(), 1);
        assert_eq!(Verdict::Ambiguous.exit_code(), 1);
        assert_eq!(Verdict::Interrupted { done: true }.exit_code(), 1);
        assert_eq!(Verdict::Interrupted { done: false }.exit_code(), 2);
        assert_eq!(Verdict::Failed { done: true }.exit_code(), 1);
        assert_eq!(Verdict::Failed { done: false }.exit_code(), 2);
    }
}
