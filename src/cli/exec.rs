//! Runs a plan and hands back what happened; printing is `output`'s job.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use sockkill::audit::AuditLog;
use sockkill::cancel::{Cancel, STOP_SIGNALS};
use sockkill::check::{self, CheckReport};
use sockkill::filter::Filter;
use sockkill::{haproxy, Error, KillReport, TcpSocket};

use super::args::Cli;
use super::plan::Plan;

/// What a command produced.
pub enum Outcome {
    List {
        netns: Option<String>,
        filter: Filter,
        sockets: Vec<TcpSocket>,
        duration_ms: u64,
    },
    Kill {
        netns: Option<String>,
        filter: Filter,
        report: Box<KillReport>,
    },
    Haproxy(Box<haproxy::Report>),
    Check(CheckReport),
    /// Text to print as is (completions, a man page).
    Text(Vec<u8>),
    /// Files written (man pages).
    Written(Vec<PathBuf>),
    /// Nothing was done: the command failed first.
    Failed(Error),
}

/// The command line, for the audit log (lossy: arguments need not be UTF-8).
pub fn command_line() -> String {
    std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

fn audit_log(path: Option<&PathBuf>, netns: Option<String>) -> Result<Option<Arc<AuditLog>>, Error> {
    path.map(|p| AuditLog::open(p, command_line(), netns).map(Arc::new)).transpose()
}

/// Runs `plan`. Returns the outcome, and the audit log when one was opened
/// (its `end` event is written with the exit code, in `output`).
pub fn execute(plan: Plan) -> (Outcome, Option<Arc<AuditLog>>) {
    match plan {
        Plan::List { netns, filter, processes } => {
            let started = Instant::now();
            let label = netns.as_ref().map(|n| n.label().to_string());
            match sockkill::list(netns.as_ref(), filter.clone(), processes) {
                Ok(sockets) => {
                    let duration_ms = started.elapsed().as_millis() as u64;
                    (Outcome::List { netns: label, filter, sockets, duration_ms }, None)
                }
                Err(e) => (Outcome::Failed(e), None),
            }
        }
        Plan::Kill { netns, filter, mut options, records } => {
            let label = netns.as_ref().map(|n| n.label().to_string());
            let cancel = match Cancel::on_signals(&STOP_SIGNALS) {
                Ok(c) => c,
                Err(e) => return (Outcome::Failed(e), None),
            };
            let audit = match audit_log(records.audit_log.as_ref(), label.clone()) {
                Ok(a) => a,
                Err(e) => return (Outcome::Failed(e), None),
            };
            options.cancel = Some(cancel);
            options.audit = audit.clone();
            let outcome = match sockkill::kill(netns.as_ref(), filter.clone(), &options) {
                Ok(report) => Outcome::Kill { netns: label, filter, report: Box::new(report) },
                Err(e) => Outcome::Failed(e),
            };
            (outcome, audit)
        }
        Plan::Haproxy { mut options, records } => {
            let cancel = match Cancel::on_signals(&STOP_SIGNALS) {
                Ok(c) => c,
                Err(e) => return (Outcome::Failed(e), None),
            };
            let audit =
                if options.dry_run { Ok(None) } else { audit_log(records.audit_log.as_ref(), options.netns.clone()) };
            let audit = match audit {
                Ok(a) => a,
                Err(e) => return (Outcome::Failed(e), None),
            };
            options.cancel = Some(cancel);
            options.audit = audit.clone();
            let outcome = match haproxy::run(&options) {
                Ok(report) => Outcome::Haproxy(Box::new(report)),
                Err(e) => Outcome::Failed(e),
            };
            (outcome, audit)
        }
        Plan::Check { netns } => match check::check(netns.as_ref()) {
            Ok(r) => (Outcome::Check(r), None),
            Err(e) => (Outcome::Failed(e), None),
        },
        Plan::Completions(shell) => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "sockkill", &mut out);
            (Outcome::Text(out), None)
        }
        Plan::Man(None) => {
            let mut out = Vec::new();
            match super::man::render(&super::man::pages()[0], &mut out) {
                Ok(()) => (Outcome::Text(out), None),
                Err(e) => (Outcome::Failed(Error::Other(format!("rendering the man page: {e}"))), None),
            }
        }
        Plan::Man(Some(dir)) => match super::man::write_all(&dir) {
            Ok(files) => (Outcome::Written(files), None),
            Err(e) => (Outcome::Failed(Error::Other(format!("writing man pages to {}: {e}", dir.display()))), None),
        },
    }
}
