//! The records a run leaves besides stdout: the metrics textfile's values
//! and the summary the audit log's `end` event carries.

use std::time::Duration;

use serde_json::Value;
use sockkill::metrics::{LingeringSeries, Metrics};

use super::exit_code;
use super::verdict_of;
use crate::cli::exec::Ran;

pub(super) fn summary_value(ran: &Ran) -> Value {
    match ran {
        Ran::Kill { report, .. } => serde_json::to_value(&report.report.summary).unwrap_or(Value::Null),
        Ran::Haproxy(r) => serde_json::to_value(&r.summary).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// A lingering sweep's finding as a metrics series.
fn series(l: &sockkill::haproxy::LingeringReport) -> LingeringSeries {
    let (backend, server) = l.found.server.split_once('/').unwrap_or(("", &l.found.server));
    LingeringSeries {
        backend: backend.to_string(),
        server: server.to_string(),
        address: l.found.address.to_string(),
        class: l.found.class.name(),
        sockets: l.found.sockets,
    }
}

pub(super) fn metrics_of(command: &'static str, ran: &Ran) -> Metrics {
    let base = Metrics { command, exit_code: i32::from(exit_code(ran)), ..Metrics::default() };
    let verdict = verdict_of(ran).map(|(v, _)| v);
    match ran {
        Ran::Kill { report, .. } => {
            let s = &report.report.summary;
            Metrics {
                matched: s.matched,
                destroyed: s.destroyed,
                already_gone: s.already_gone,
                failed: s.unsuccessful(),
                remaining: s.remaining,
                ambiguous: s.ambiguous,
                verdict,
                duration: Duration::from_millis(s.duration_ms),
                ..base
            }
        }
        Ran::Haproxy(r) => Metrics {
            matched: r.summary.initial,
            destroyed: r.summary.destroyed,
            already_gone: r.summary.already_gone,
            failed: r.summary.failed,
            remaining: Some(r.summary.remaining),
            ambiguous: r.summary.ambiguous,
            verdict,
            duration: Duration::from_millis(r.duration_ms),
            lingering: r.lingering.as_ref().map(|found| found.iter().map(series).collect()),
            ..base
        },
        Ran::Failed(_) => Metrics { verdict, ..base },
        _ => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockkill::{Error, Verdict};

    /// A command that failed before doing anything is one story in every
    /// record: `interrupted` for a signal, `failed` otherwise, exit 2.
    #[test]
    fn an_early_failure_is_the_same_in_the_metrics_and_the_exit_code() {
        for (e, v) in [
            (Error::Interrupted(" (test)"), Verdict::Interrupted { done: false }),
            (Error::NoPermission, Verdict::Failed { done: false }),
        ] {
            let ran = Ran::Failed(e);
            let m = metrics_of("haproxy", &ran);
            assert_eq!((m.verdict, m.exit_code), (Some(v), 2));
            assert_eq!(exit_code(&ran), 2);
            assert_eq!(verdict_of(&ran), Some((v, false)));
            assert_eq!(summary_value(&ran), Value::Null);
        }
    }
}
