//! The report of a `sockkill haproxy` run: the engine's report plus what was
//! learnt from HAProxy, made once at the end.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tracing::warn;

use super::api::Api;
use super::attribution::Tables;
use super::discovery::{Topology, Worker};
use super::lingering::{Lingering, Sweep};
use super::options::Options;
use super::parse::{self, WaitAnswer};
use super::places::Places;
use super::target::{Closed, HaproxyClassifier};
use super::wait::{ms, WaitCall};
use crate::cancel::Cancel;
use crate::engine::run::{Clock, WallClock};
use crate::engine::{Ledger, RunReport, Spared, Summary, Verdict};
use crate::socket::TcpSocket;
use crate::Outcome;

/// Counts of a [`Report`].
#[derive(Debug, Clone, Serialize)]
pub struct HaproxySummary {
    /// Targets at the start.
    pub initial: usize,
    /// Targets HAProxy closed by itself.
    pub closed_by_haproxy: usize,
    /// Sockets destroyed by sockkill.
    pub destroyed: usize,
    /// Sockets gone before their destroy arrived.
    pub already_gone: usize,
    /// Destroys refused, unacknowledged, or not reaching a live socket.
    pub failed: usize,
    /// Targets at the end.
    pub remaining: usize,
    /// Sockets of other servers left alone.
    pub other_server: usize,
    /// Sockets left alone because HAProxy could not tell whose they are.
    pub ambiguous: usize,
    /// Targets first seen after the first destroy (HAProxy retrying, new connections).
    pub appeared_after_first_destroy: usize,
    /// The verdict (`verdict` and `clean` in JSON, both from this one value).
    #[serde(flatten, serialize_with = "crate::engine::verdict_and_clean")]
    pub verdict: Verdict,
}

/// The outcome of a safety-net run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Nothing was changed or destroyed on purpose.
    pub dry_run: bool,
    /// HAProxy's version (`show info`).
    pub haproxy_version: String,
    /// The HAProxy processes whose sockets were considered (our pids).
    pub pids: Vec<u32>,
    /// The same, with HAProxy's own pids.
    pub workers: Vec<Worker>,
    /// The worker that answered `--socket`.
    pub answering_pid: u32,
    /// The master process, in master-worker mode.
    pub master_pid: Option<u32>,
    /// The master CLI used to reach the other workers.
    pub master_cli: Option<String>,
    /// `backend/server`, when named.
    pub server: Option<String>,
    /// The server's address: `--addr`, else the one `show servers state`
    /// prints (port 0: the client's port; a port offset prints unmarked);
    /// `null` for the lingering sweep.
    pub server_addr: Option<SocketAddr>,
    /// `--lingering`: what lingered when the sweep looked, per class, server and address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lingering: Option<Vec<LingeringReport>>,
    /// `--lingering`: processes whose tables or configuration could not be
    /// read (their connections were not judged), and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_asked: Vec<String>,
    /// Every place the run looked at: `server_addr`, the named server's
    /// configured address, and wherever HAProxy's tables named a connection
    /// of the server (a previous address, a mapped port); `*`: any port.
    pub places: Places,
    /// Commands sent to HAProxy: every command whose bytes left, whether or
    /// not its answer came (a sent command counts as done for the exit code).
    pub commands_sent: Vec<String>,
    /// Of those, the ones whose answer did not confirm them (late, cut short
    /// by a signal, unexpected): HAProxy may or may not have applied them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub commands_unconfirmed: Vec<String>,
    /// `set server ... state maint` was sent (sockkill never takes it back;
    /// see `commands_unconfirmed` for whether HAProxy confirmed it).
    pub server_left_in_maintenance: bool,
    /// HAProxy >= 3.0: the answer to `wait <grace> srv-removable`.
    pub wait_answer: Option<WaitAnswer>,
    /// When HAProxy answered the `wait`, in ms from the start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_answered_at_ms: Option<u64>,
    /// Why the `wait` got no usable answer (enforcement went on without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_error: Option<String>,
    /// The grace period in effect, in ms.
    pub grace_ms: u64,
    /// Targets at the start.
    pub initial: usize,
    /// Targets HAProxy closed by itself, and when.
    pub closed_by_haproxy: Vec<Closed>,
    /// Every target sockkill acted on (as `kill`'s `sockets`).
    pub destroyed: Ledger,
    /// Targets at the end.
    pub remaining: Vec<TcpSocket>,
    /// Sockets to the address that HAProxy attributes to another server (left alone).
    pub other_server: Vec<Spared>,
    /// Sockets to the address that no HAProxy table names while other servers
    /// may hold that address (left alone; the run is not clean while one remains).
    pub ambiguous: Vec<Spared>,
    /// Workers that exited during the run (e.g. an old worker done with its last session).
    pub workers_exited: Vec<u32>,
    /// HAProxy's session count for the server at the end (`show stat` scur).
    pub scur: Option<u64>,
    /// HAProxy tables read to attribute sockets, per process, and their size.
    pub tables_read: Tables,
    /// The verdict: `clean`, `remaining`, `unsettled`, `ambiguous`,
    /// `interrupted`, `failed` — and `clean` (nothing remains, nothing
    /// ambiguous) in JSON, both from this one value.
    #[serde(flatten, serialize_with = "crate::engine::verdict_and_clean")]
    pub verdict: Verdict,
    /// The verdict in plain words, when it is not clean.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict_reason: Option<String>,
    /// When a target was last seen, in ms from the start.
    pub last_seen_ms: Option<u64>,
    /// A signal stopped the run.
    pub interrupted: bool,
    /// Wall time.
    pub duration_ms: u64,
    /// What stopped the run early, if an error did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The error's kind, for scripts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<&'static str>,
    /// HAProxy still named sessions of the server that no socket explained
    /// when the run ended (its streams in `show sess`, `scur` in `show stat`):
    /// never clean against HAProxy's own view.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unexplained: Option<String>,
    /// Counts.
    pub summary: HaproxySummary,
    /// The engine's counts.
    #[serde(skip)]
    pub engine: Summary,
}

impl Report {
    /// The run's verdict (exit code, `clean`).
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }
}

/// Everything the run learnt besides the engine's report.
pub(super) struct Learnt {
    pub version: String,
    pub topo: Topology,
    pub server_addr: Option<SocketAddr>,
    pub sweep: Option<Sweep>,
    pub places: Places,
    pub commands_sent: Vec<String>,
    pub unconfirmed: Vec<String>,
    pub maintenance: bool,
    pub wait: Option<WaitCall>,
    pub initial: usize,
    pub grace: Duration,
    pub clock: WallClock,
}

pub(super) fn report(opts: &Options, mut enf: RunReport, classifier: &mut HaproxyClassifier, mut l: Learnt) -> Report {
    let cancelled = opts.cancel.as_ref().is_some_and(Cancel::is_cancelled);
    if let Some(w) = l.wait.as_mut() {
        w.settle(if cancelled { Duration::ZERO } else { Duration::from_millis(200) });
    }
    // A command that changed HAProxy's state counts as done for the exit code.
    enf.conclude(l.maintenance || !l.commands_sent.is_empty());
    let verdict = enf.verdict();
    let abandoned = opts.cancel.as_ref().is_some_and(Cancel::is_abandoned);
    let scur = if abandoned { None } else { scur(classifier.api(), opts) };
    let remaining = enf.remaining.take().unwrap_or_default();
    let (lingering, not_asked) = match l.sweep.take() {
        Some(sw) => {
            let spared: Vec<&Spared> = enf.other_server.iter().chain(&enf.ambiguous).collect();
            (Some(lingering_report(sw.lingering, &enf.sockets, &remaining, &spared)), sw.unasked)
        }
        None => (None, Vec::new()),
    };
    let summary = HaproxySummary {
        initial: l.initial,
        closed_by_haproxy: classifier.closed.len(),
        destroyed: enf.summary.destroyed,
        already_gone: enf.summary.already_gone,
        failed: enf.summary.unsuccessful(),
        remaining: remaining.len(),
        other_server: enf.other_server.len(),
        ambiguous: enf.ambiguous.len(),
        appeared_after_first_destroy: enf.summary.appeared_after_first_destroy,
        verdict,
    };
    let (wait_answer, wait_answered_at_ms, wait_error) = match l.wait {
        Some(w) => (w.answer, w.at_ms, w.error.map(|e| e.to_string())),
        None => (None, None, None),
    };
    // HAProxy's own word is part of why a run is not clean.
    if let (Some(reason), Some(e)) = (enf.verdict_reason.as_mut(), &wait_error) {
        reason.push_str(&format!("; HAProxy's `wait` gave no answer ({e})"));
    }
    Report {
        dry_run: opts.dry_run,
        haproxy_version: l.version,
        pids: l.topo.workers.iter().map(|w| w.pid).collect(),
        answering_pid: l.topo.answering.pid,
        workers: l.topo.workers,
        master_pid: l.topo.master,
        master_cli: l.topo.master_cli.map(|c| c.to_string()),
        server: opts.server.as_ref().map(|(b, s)| format!("{b}/{s}")),
        server_addr: l.server_addr,
        lingering,
        not_asked,
        places: l.places,
        commands_sent: l.commands_sent,
        commands_unconfirmed: l.unconfirmed,
        server_left_in_maintenance: l.maintenance,
        wait_answer,
        wait_answered_at_ms,
        wait_error,
        grace_ms: ms(l.grace),
        initial: l.initial,
        closed_by_haproxy: std::mem::take(&mut classifier.closed),
        destroyed: enf.sockets,
        remaining,
        other_server: enf.other_server,
        ambiguous: enf.ambiguous,
        workers_exited: classifier.exited().to_vec(),
        scur,
        tables_read: classifier.tables().clone(),
        verdict,
        verdict_reason: enf.verdict_reason,
        last_seen_ms: enf.last_seen_ms,
        interrupted: enf.summary.interrupted,
        duration_ms: ms(l.clock.now()),
        error: enf.error.as_ref().map(|e| e.to_string()),
        error_kind: enf.error_kind,
        unexplained: enf.doubt.clone(),
        summary,
        engine: enf.summary,
    }
}

/// One class/server/address of the sweep, and what became of its connections.
#[derive(Debug, Clone, Serialize)]
pub struct LingeringReport {
    /// What the sweep found.
    #[serde(flatten)]
    pub found: Lingering,
    /// Of the run's destroyed sockets, those of this entry: the sweep's own,
    /// and new ones at its address when no other enforced entry has it.
    pub destroyed: usize,
    /// Of the run's remaining targets, those of this entry (counted alike).
    pub remaining: usize,
    /// Of the sweep's sockets, those the run judged otherwise (ambiguous,
    /// another server's) and left alone: still there, not destroyed.
    pub left: usize,
}

/// Each entry's share of the run, by socket cookie: an address two entries
/// share (a host removed from two backends) is never counted twice.
fn lingering_report(
    found: Vec<Lingering>,
    ledger: &Ledger,
    remaining: &[TcpSocket],
    spared: &[&Spared],
) -> Vec<LingeringReport> {
    let swept: HashSet<u64> = found.iter().flat_map(|f| f.cookies.iter().copied()).collect();
    let entries_at = |a: SocketAddr| found.iter().filter(|f| f.enforced && f.address == a).count();
    let shares: Vec<(usize, usize, usize)> = found
        .iter()
        .map(|f| {
            if !f.enforced {
                return (0, 0, 0);
            }
            let own: HashSet<u64> = f.cookies.iter().copied().collect();
            let new_here = entries_at(f.address) == 1;
            let ours = |s: &TcpSocket| {
                own.contains(&s.cookie()) || (new_here && !swept.contains(&s.cookie()) && s.peer() == f.address)
            };
            let destroyed = ledger.iter().filter(|e| e.outcome == Outcome::Destroyed && ours(e.socket)).count();
            let remaining = remaining.iter().filter(|s| ours(s)).count();
            let left = spared.iter().filter(|s| own.contains(&s.socket.cookie())).count();
            (destroyed, remaining, left)
        })
        .collect();
    found
        .into_iter()
        .zip(shares)
        .map(|(found, (destroyed, remaining, left))| LingeringReport { found, destroyed, remaining, left })
        .collect()
}

fn scur(api: &Api, opts: &Options) -> Option<u64> {
    let (b, s) = opts.server.as_ref()?;
    match api.command("show stat").and_then(|t| parse::parse_stat(&t)) {
        Ok(rows) => rows.into_iter().find(|r| &r.proxy == b && &r.server == s).and_then(|r| r.scur),
        Err(e) => {
            warn!(%e, "cannot read show stat");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haproxy::lingering::Lingers;
    use crate::socket::TcpState;

    fn sock(cookie: u64, peer: &str) -> TcpSocket {
        let local = format!("127.0.0.1:{}", 20_000 + cookie).parse().unwrap();
        TcpSocket::for_test(local, peer.parse().unwrap(), TcpState::Established).with_ids(cookie, cookie as u32)
    }

    fn entry(server: &str, address: &str, cookies: &[u64]) -> Lingering {
        Lingering {
            class: Lingers::Gone,
            server: server.into(),
            address: address.parse().unwrap(),
            now_at: None,
            pids: vec![1],
            sockets: cookies.len(),
            cookies: cookies.to_vec(),
            enforced: true,
        }
    }

    /// A host removed from two backends: two entries at one address, each
    /// counting its own sockets; one judged ambiguous later is `left`; a new
    /// socket at an address only one entry has counts for that entry.
    #[test]
    fn each_entry_counts_its_own_sockets() {
        let x = "10.0.0.7:80";
        let found = vec![entry("a/s", x, &[1, 2]), entry("b/s", x, &[3]), entry("c/s", "10.0.0.8:80", &[4, 5])];
        let mut ledger = Ledger::default();
        let batch = vec![sock(1, x), sock(2, x), sock(3, x), sock(4, "10.0.0.8:80"), sock(6, "10.0.0.8:80")];
        ledger.record(batch, vec![Some(Outcome::Destroyed); 5], 1, 0);
        let ambiguous = Spared { socket: sock(5, "10.0.0.8:80"), reason: "judged again".into() };
        let r = lingering_report(found, &ledger, &[], &[&ambiguous]);
        let shares: Vec<(usize, usize, usize)> = r.iter().map(|l| (l.destroyed, l.remaining, l.left)).collect();
        assert_eq!(shares, vec![(2, 0, 0), (1, 0, 0), (2, 0, 1)]);
    }
}
