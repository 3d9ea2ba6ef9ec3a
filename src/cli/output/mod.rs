//! The one place that turns an outcome into output, in one order and from
//! one report: the metrics textfile ([`records`]), the human table or the
//! JSON document on stdout ([`human`], [`json`]: `schema_version` 1,
//! documented in README.md and docs/sockkill.schema.json), the audit log's
//! `end` event last, the error line on stderr, and the exit code.

mod human;
mod json;
mod records;

use std::io::{self, Write};
use std::path::Path;

use sockkill::audit::AuditLog;
use sockkill::metrics::{self, Metrics};
use sockkill::Verdict;

use super::exec::Ran;
use super::plan::Global;
pub use human::set_color;
pub use json::error_doc;
use records::{metrics_of, summary_value};

/// Writes a line on stderr; a closed or full stderr is not worth a panic.
pub fn stderr_line(text: &str) {
    let _ = writeln!(io::stderr(), "{text}");
}

/// The verdict of a run that may destroy (`kill`, `haproxy`), and whether
/// it did anything; a command that failed before doing anything is
/// `failed` (or `interrupted`, for a signal) with nothing done.
pub(super) fn verdict_of(ran: &Ran) -> Option<(Verdict, bool)> {
    match ran {
        Ran::Kill { report, .. } => Some((report.verdict(), report.report.destroyed_any())),
        Ran::Haproxy(r) => {
            let done = r.summary.destroyed > 0 || r.engine.unacknowledged > 0 || !r.commands_sent.is_empty();
            Some((r.verdict(), done))
        }
        Ran::Failed(sockkill::Error::Interrupted(_)) => Some((Verdict::Interrupted { done: false }, false)),
        Ran::Failed(_) => Some((Verdict::Failed { done: false }, false)),
        _ => None,
    }
}

/// A record that could not be written after the run (metrics, stdout, the
/// audit `end`): what it says, and its kind for `error_kind`.
struct Late {
    text: String,
    kind: &'static str,
}

/// The run's story after a late failure: the verdict becomes `failed`
/// (keeping whether anything was done), the reason and the error kind say
/// why — set in the report itself, so every record written from now on
/// derives from it. Returns whether the verdict changed.
fn degrade(ran: &mut Ran, late: &Late) -> bool {
    let Some((v, done)) = verdict_of(ran) else { return false };
    let after = v.after_late_error(done);
    let reason = Some(format!("a record of the run could not be written: {}", late.text));
    match ran {
        Ran::Kill { report, .. } => {
            let r = &mut report.report;
            r.summary.verdict = after;
            r.verdict_reason = reason;
            r.error_kind.get_or_insert(late.kind);
        }
        Ran::Haproxy(r) => {
            r.verdict = after;
            r.summary.verdict = after;
            r.verdict_reason = reason;
            r.error_kind.get_or_insert(late.kind);
        }
        _ => {}
    }
    after != v
}

/// The exit code of what ran: the verdict's for kill and haproxy; `list`
/// and the others 0, `check` 2 when the probe failed, 2 when nothing ran.
pub(super) fn exit_code(ran: &Ran) -> u8 {
    match ran {
        Ran::List { .. } | Ran::Text(_) | Ran::Written(_) => 0,
        Ran::Check(r) => {
            if r.ok {
                0
            } else {
                2
            }
        }
        Ran::Kill { .. } | Ran::Haproxy(_) | Ran::Failed(_) => verdict_of(ran).map_or(2, |(v, _)| v.exit_code()),
    }
}

fn error_of(ran: &Ran) -> Option<String> {
    match ran {
        Ran::Kill { report, .. } => report.report.error.as_ref().map(|e| e.to_string()),
        Ran::Haproxy(r) => r.error.clone(),
        Ran::Failed(e) => Some(e.to_string()),
        _ => None,
    }
}

/// Finishes a run: metrics, stdout, audit `end` event, stderr. Returns the
/// exit code. Every record derives from the one report; a record that
/// fails turns the verdict into `failed` (see [`degrade`]) before the next
/// one is written. The order: the metrics first (rewritten, atomically,
/// whenever a later record fails), then stdout, then the audit `end` last of
/// all — the authority. Only when that last write itself fails can stdout,
/// already delivered, show the earlier verdict.
pub fn finish(
    global: &Global,
    command: &'static str,
    mut ran: Ran,
    audit: Option<&AuditLog>,
    metrics_file: Option<&Path>,
    server: Option<String>,
) -> u8 {
    let mut late: Vec<Late> = Vec::new();
    let write_metrics = |ran: &Ran| -> Result<(), Late> {
        match metrics_file {
            Some(path) => metrics::write(path, &Metrics { server: server.clone(), ..metrics_of(command, ran) })
                .map_err(|e| Late { text: e.to_string(), kind: e.kind() }),
            None => Ok(()),
        }
    };
    let mut metrics_ok = true;
    if let Err(e) = write_metrics(&ran) {
        degrade(&mut ran, &e);
        late.push(e);
        metrics_ok = false;
    }
    let after_failure = |ran: &mut Ran, e: Late, late: &mut Vec<Late>| {
        if degrade(ran, &e) && metrics_ok {
            if let Err(again) = write_metrics(ran) {
                late.push(again);
            }
        }
        late.push(e);
    };
    let code = exit_code(&ran);
    let error = error_of(&ran).or_else(|| (!late.is_empty()).then(|| joined(&late)));
    let written = write_stdout(|out| {
        if global.json {
            json::document(out, command, &ran, code, error.as_deref())
        } else {
            human::human(out, &ran)
        }
    });
    if let Err(e) = written {
        after_failure(&mut ran, Late { text: format!("writing output: {e}"), kind: "output" }, &mut late);
    }
    if let Some(log) = audit {
        let verdict = verdict_of(&ran).map(|(v, _)| v.name());
        let error = error_of(&ran).or_else(|| (!late.is_empty()).then(|| joined(&late)));
        if let Err(e) = log.end(i32::from(exit_code(&ran)), verdict, &summary_value(&ran), error.as_deref()) {
            after_failure(&mut ran, Late { text: e.to_string(), kind: e.kind() }, &mut late);
        }
    }
    let code = exit_code(&ran);
    if let Some(e) = error_of(&ran) {
        // A run that started and stopped on an error before destroying anything says so.
        let nothing = code == 2 && matches!(ran, Ran::Kill { .. } | Ran::Haproxy(_));
        stderr_line(&format!("sockkill: error: {e}{}", if nothing { " (nothing was destroyed)" } else { "" }));
    }
    for e in &late {
        stderr_line(&format!("sockkill: error: {}", e.text));
    }
    // A report that could not be delivered is no success, also for `list` and `check`.
    if code == 0 && !late.is_empty() {
        return 2;
    }
    code
}

fn joined(late: &[Late]) -> String {
    late.iter().map(|l| l.text.as_str()).collect::<Vec<_>>().join("; ")
}

/// Writes through a buffered stdout; a reader that went away (EPIPE) is a normal end.
fn write_stdout(f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    // Block-buffered: Rust's stdout alone writes once per line (100k rows = 100k syscalls).
    let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    match f(&mut out).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockkill::check::CheckReport;
    use sockkill::engine::{End, Ledger, RunReport, Summary};
    use sockkill::{Error, Filter, KillReport};

    fn kill(verdict: Verdict) -> Ran {
        let summary = Summary {
            matched: 0,
            new_during_kill: 0,
            appeared_after_first_destroy: 0,
            destroyed: 0,
            already_gone: 0,
            not_found: 0,
            failed: 0,
            unacknowledged: 0,
            remaining: Some(0),
            remaining_original: Some(0),
            remaining_new: Some(0),
            ambiguous: 0,
            passes: 0,
            verified: true,
            interrupted: false,
            verdict,
            duration_ms: 0,
        };
        let report = RunReport {
            dry_run: false,
            sockets: Ledger::default(),
            remaining: Some(Vec::new()),
            other_server: Vec::new(),
            ambiguous: Vec::new(),
            summary,
            end: End::Quiet,
            verdict_reason: None,
            last_seen_ms: None,
            error: None,
            error_kind: None,
            doubt: None,
        };
        let report = Box::new(KillReport { report, processes_exited: Vec::new() });
        Ran::Kill { netns: None, filter: Filter::default(), report }
    }

    /// The one exit-code function over every outcome shape: a run's verdict
    /// decides it; what ran no verdict for exits 0, a failed check or a
    /// command that failed first 2; and a late failure of a record turns a
    /// run into `failed`, keeping whether it did anything.
    #[test]
    fn every_outcome_has_one_exit_code() {
        let verdicts = [
            Verdict::Clean,
            Verdict::Unverified,
            Verdict::Remaining,
            Verdict::Unsettled,
            Verdict::Ambiguous,
            Verdict::Interrupted { done: true },
            Verdict::Interrupted { done: false },
            Verdict::Failed { done: true },
            Verdict::Failed { done: false },
        ];
        for v in verdicts {
            let mut ran = kill(v);
            assert_eq!(exit_code(&ran), v.exit_code(), "{v:?}");
            let late = Late { text: "writing output: no space".into(), kind: "output" };
            degrade(&mut ran, &late);
            let (after, _) = verdict_of(&ran).unwrap_or((Verdict::Clean, false));
            assert!(matches!(after, Verdict::Failed { .. }), "{v:?} -> {after:?}");
            assert_ne!(exit_code(&ran), 0, "{v:?}: a report that could not be delivered is no success");
        }
        let check = |ok| Ran::Check(CheckReport { netns: String::new(), cap_net_admin: true, steps: Vec::new(), ok });
        assert_eq!(exit_code(&check(true)), 0);
        assert_eq!(exit_code(&check(false)), 2);
        assert_eq!(exit_code(&Ran::Text(Vec::new())), 0);
        assert_eq!(exit_code(&Ran::Written(Vec::new())), 0);
        assert_eq!(
            exit_code(&Ran::List { netns: None, filter: Filter::default(), sockets: Vec::new(), duration_ms: 0 }),
            0
        );
        assert_eq!(exit_code(&Ran::Failed(Error::NoPermission)), 2);
        assert_eq!(exit_code(&Ran::Failed(Error::Interrupted(" (test)"))), 2);
    }
}
