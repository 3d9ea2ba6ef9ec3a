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
use super::plan::{Plan, Records};

/// What a command produced.
pub enum Ran {
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

/// The signal handler and the audit log of a run that may destroy.
fn records(records: &Records, netns: Option<String>, dry_run: bool) -> Result<(Cancel, Option<Arc<AuditLog>>), Error> {
    let cancel = Cancel::on_signals(&STOP_SIGNALS)?;
    let audit = match (&records.audit_log, dry_run) {
        (Some(p), false) => Some(Arc::new(AuditLog::open(p, command_line(), netns)?)),
        _ => None,
    };
    Ok((cancel, audit))
}

/// Runs `plan`. Returns what happened, and the audit log when one was opened
/// (its `end` event is written with the exit code, in `output`).
pub fn execute(plan: Plan) -> (Ran, Option<Arc<AuditLog>>) {
    match plan {
        Plan::List { netns, filter, processes } => {
            let started = Instant::now();
            let label = netns.as_ref().map(|n| n.label().to_string());
            match sockkill::list(netns.as_ref(), (*filter).clone(), processes) {
                Ok(sockets) => {
                    let duration_ms = started.elapsed().as_millis() as u64;
                    (Ran::List { netns: label, filter: *filter, sockets, duration_ms }, None)
                }
                Err(e) => (Ran::Failed(e), None),
            }
        }
        Plan::Kill { netns, mut plan, records: r } => {
            let label = netns.as_ref().map(|n| n.label().to_string());
            let (cancel, audit) = match records(&r, label.clone(), false) {
                Ok(x) => x,
                Err(e) => return (Ran::Failed(e), None),
            };
            plan.attach(Some(cancel), audit.clone());
            let filter = plan.filter().clone();
            let ran = match plan.run(netns.as_ref()) {
                Ok(report) => Ran::Kill { netns: label, filter, report: Box::new(report) },
                Err(e) => Ran::Failed(e),
            };
            (ran, audit)
        }
        Plan::Haproxy { mut plan, records: r } => {
            let opts = plan.options();
            let (cancel, audit) = match records(&r, opts.netns.clone(), opts.dry_run) {
                Ok(x) => x,
                Err(e) => return (Ran::Failed(e), None),
            };
            plan.attach(Some(cancel), audit.clone());
            let ran = match plan.run() {
                Ok(report) => Ran::Haproxy(Box::new(report)),
                Err(e) => Ran::Failed(e),
            };
            (ran, audit)
        }
        Plan::Check { netns } => match check::check(netns.as_ref()) {
            Ok(r) => (Ran::Check(r), None),
            Err(e) => (Ran::Failed(e), None),
        },
        Plan::Completions(shell) => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "sockkill", &mut out);
            (Ran::Text(out), None)
        }
        Plan::Man(None) => {
            let mut out = Vec::new();
            match super::man::render(&super::man::pages()[0], &mut out) {
                Ok(()) => (Ran::Text(out), None),
                Err(e) => (Ran::Failed(Error::System { what: "rendering the man page", source: e }), None),
            }
        }
        Plan::Man(Some(dir)) => match super::man::write_all(&dir) {
            Ok(files) => (Ran::Written(files), None),
            Err(source) => (Ran::Failed(Error::File { path: dir, source }), None),
        },
    }
}
