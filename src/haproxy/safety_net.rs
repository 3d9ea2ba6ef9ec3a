//! `sockkill haproxy`: ask HAProxy to let go of a server, wait for it, then
//! destroy what its processes still hold to that server, and verify.
//!
//! This module says what a target is (through [`HaproxyJudge`]) and talks to
//! HAProxy; the loop itself is the engine's, and it never sees netlink bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

use super::api::{Api, Endpoint};
use super::discovery::{self, Worker};
use super::judge::{Closed, HaproxyJudge, Target};
use super::parse::{self, ServerState, WaitAnswer};
use crate::audit::AuditLog;
use crate::cancel::Cancel;
use crate::diag::Outcome;
use crate::engine::enforce::{Ledger, Policy, Run, Spared, Summary};
use crate::engine::{Engine, Query};
use crate::error::{Error, Result};
use crate::filter::{canonical_ip, Filter, PortRange, StateSet};
use crate::socket::TcpSocket;

/// What to do; see `sockkill haproxy --help`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The worker's stats socket (`PATH` or `HOST:PORT`).
    pub socket: String,
    /// The master CLI socket (`-S`); found from the master's command line when not given.
    pub master_socket: Option<String>,
    /// `(backend, server)`.
    pub server: Option<(String, String)>,
    /// The server's address, when given explicitly.
    pub addr: Option<SocketAddr>,
    /// HAProxy processes to act for, instead of discovering them.
    pub pids: Vec<u32>,
    /// The processes' network namespace, instead of theirs from /proc.
    pub netns: Option<String>,
    /// Send no state-changing command to HAProxy; only enforce.
    pub no_shutdown: bool,
    /// Change nothing, destroy nothing: report what lingers now.
    pub dry_run: bool,
    /// How long HAProxy gets to close the sessions itself.
    pub grace: Duration,
    /// Clean only once no target was seen for this long.
    pub settle: Duration,
    /// Give up (not clean) this long after the start.
    pub deadline: Duration,
    /// Timeout for connecting to HAProxy and for each answer.
    pub api_timeout: Duration,
    /// Time between looks.
    pub poll: Duration,
    /// Keep enforcing until this long after the start.
    pub window: Option<Duration>,
    /// Refuse (before any command is sent) when more targets than this match,
    /// and send no later pass larger than this.
    pub max: Option<usize>,
    /// Stops the run early when raised.
    pub cancel: Option<Cancel>,
    /// Records every destroyed socket.
    pub audit: Option<Arc<AuditLog>>,
}

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
    /// No target for the settle period at the end.
    pub clean: bool,
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
    /// The server's address.
    pub server_addr: SocketAddr,
    /// Commands sent to HAProxy.
    pub commands_sent: Vec<String>,
    /// `set server ... state maint` was sent (sockkill never takes it back).
    pub server_left_in_maintenance: bool,
    /// HAProxy >= 3.0: the answer to `wait <grace> srv-removable`.
    pub wait_answer: Option<WaitAnswer>,
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
    /// Sockets to the address whose server HAProxy cannot tell while others
    /// share the address (left alone; the run is not clean while one remains).
    pub ambiguous: Vec<Spared>,
    /// Workers that exited during the run (e.g. an old worker done with its last session).
    pub workers_exited: Vec<u32>,
    /// HAProxy's session count for the server at the end (`show stat` scur).
    pub scur: Option<u64>,
    /// No target for the settle period.
    pub clean: bool,
    /// When a target was last seen (ms since start).
    pub last_seen_ms: Option<u64>,
    /// A signal stopped the run.
    pub interrupted: bool,
    /// Wall time.
    pub duration_ms: u64,
    /// What stopped the run early, if an error did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Counts.
    pub summary: HaproxySummary,
    /// The engine's counts (for metrics and the exit code).
    #[serde(skip)]
    pub engine: Summary,
    #[serde(skip)]
    exit_code: i32,
}

impl Report {
    /// The documented exit code: 0 clean, 1 sockets remain (or a signal or an
    /// error came after something was done), 2 error with nothing done.
    pub fn exit_code(&self) -> i32 {
        self.exit_code
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Runs the safety net. An `Err` means nothing was changed or destroyed;
/// anything that goes wrong later is in the report's `error`.
pub fn run(opts: &Options) -> Result<Report> {
    let started = Instant::now();
    let cancel = opts.cancel.as_ref();
    let api = Api::new(Endpoint::parse(&opts.socket), opts.api_timeout, opts.cancel.clone())?;
    let (info, answering) = discovery::identify(&api)?;
    let config = servers_state(&api)?;
    let server_addr = resolve_addr(&config, opts)?;
    let topo = discovery::discover(answering, opts.master_socket.as_deref(), &opts.pids, opts.api_timeout, cancel)?;
    let pids: Vec<u32> = topo.workers.iter().map(|w| w.pid).collect();
    info!(?pids, master = ?topo.master, "HAProxy processes");
    let ns = discovery::namespace_of(&pids, opts.netns.as_deref())?;
    let mut engine = Engine::open(ns.as_ref())?;
    if !opts.dry_run && !crate::check::has_cap_net_admin() {
        return Err(Error::NoPermission);
    }
    let query = Query::new(Filter {
        // Mapped IPv6 (::ffff:a.b.c.d) stands for the IPv4 address in the filter.
        dst: vec![canonical_ip(server_addr.ip()).into()],
        dport: vec![PortRange::one(server_addr.port())],
        // Any state but LISTEN and TIME-WAIT; never the source address
        // (`source ... usesrc clientip` makes it the client's).
        states: StateSet::DEFAULT,
        ..Filter::default()
    })?;
    let master_api = match &topo.master_cli {
        Some(cli) => match Api::new(cli.clone(), opts.api_timeout, opts.cancel.clone()) {
            Ok(a) => Some(a),
            Err(e) if opts.master_socket.is_some() => return Err(e),
            Err(e) => {
                warn!(%e, "the master CLI named in the master's command line is not usable: old workers cannot be asked");
                None
            }
        },
        None => None,
    };
    let target = match &opts.server {
        Some((backend, server)) => Target::Named { backend: backend.clone(), server: server.clone() },
        None => Target::Gone,
    };
    let judge =
        HaproxyJudge::new(target, server_addr, config, topo.workers.clone(), topo.answering.pid, api, master_api)?;
    let policy = Policy {
        dry_run: opts.dry_run,
        verify: true,
        passes: None,
        grace: opts.grace,
        settle: opts.settle,
        deadline: Some(opts.deadline),
        window: opts.window,
        interval: opts.poll,
        max: opts.max,
    };
    let mut run = Run::start(&mut engine, &query, policy, judge, cancel, opts.audit.as_deref())?;
    let initial = run.matched();

    // HAProxy's own shutdown, unless told not to. Nothing is sent after a signal.
    let mut commands_sent = Vec::new();
    let mut maintenance = false;
    let mut wait_answer = None;
    let mut failure = None;
    if let (Some((b, s)), false, false) = (&opts.server, opts.no_shutdown, opts.dry_run) {
        let api = run.judge_mut().api();
        for cmd in [format!("set server {b}/{s} state maint"), format!("shutdown sessions server {b}/{s}")] {
            match api.command(&cmd).and_then(|a| parse::expect_empty(&cmd, &a)) {
                Ok(()) => {
                    info!(cmd = %cmd, "sent to HAProxy");
                    maintenance |= cmd.ends_with("state maint");
                    commands_sent.push(cmd);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if failure.is_none() && parse::version_at_least(&info.version, 3, 0) {
            // Waits until the server has no session left, or the grace period ends.
            let cmd = format!("wait {}ms srv-removable {b}/{s}", ms(opts.grace));
            match api
                .command_within(&cmd, opts.grace.saturating_add(api.timeout()))
                .and_then(|a| parse::parse_wait(&cmd, &a))
            {
                Ok(answer) => {
                    info!(cmd = %cmd, ?answer, "HAProxy answered");
                    wait_answer = Some(answer);
                    commands_sent.push(cmd);
                }
                Err(e) => failure = Some(e),
            }
        }
    }
    let (enf, mut judge) = match failure {
        Some(Error::Interrupted(_)) => run.interrupt(),
        Some(e) => run.stop(e),
        None => run.finish(),
    };
    let abandoned = cancel.is_some_and(Cancel::is_abandoned);
    let scur = if abandoned { None } else { scur(judge.api(), opts) };
    let count = |o: fn(&Outcome) -> bool| enf.sockets.count(|x| o(&x));
    let remaining = enf.remaining.clone().unwrap_or_default();
    let exit_code = enf.exit_code(maintenance || !commands_sent.is_empty());
    let summary = HaproxySummary {
        initial,
        closed_by_haproxy: judge.closed.len(),
        destroyed: count(|o| *o == Outcome::Destroyed),
        already_gone: count(|o| *o == Outcome::AlreadyGone),
        failed: count(|o| matches!(o, Outcome::Failed(_) | Outcome::Unacknowledged | Outcome::NotFound)),
        remaining: remaining.len(),
        other_server: enf.kept.len(),
        ambiguous: enf.unsure.len(),
        clean: enf.clean,
    };
    let workers_exited = judge.exited().to_vec();
    let answering_pid = topo.answering.pid;
    let duration_ms = ms(started.elapsed());
    Ok(Report {
        dry_run: opts.dry_run,
        haproxy_version: info.version,
        pids,
        workers: topo.workers,
        answering_pid,
        master_pid: topo.master,
        master_cli: topo.master_cli.map(|c| c.to_string()),
        server: opts.server.as_ref().map(|(b, s)| format!("{b}/{s}")),
        server_addr,
        commands_sent,
        server_left_in_maintenance: maintenance,
        wait_answer,
        initial,
        closed_by_haproxy: judge.closed,
        destroyed: enf.sockets,
        remaining,
        other_server: enf.kept,
        ambiguous: enf.unsure,
        workers_exited,
        scur,
        clean: enf.clean,
        last_seen_ms: enf.last_seen_ms,
        interrupted: enf.summary.interrupted,
        duration_ms,
        error: enf.error.map(|e| e.to_string()),
        summary,
        engine: enf.summary,
        exit_code,
    })
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

/// The current worker's servers, every backend.
fn servers_state(api: &Api) -> Result<Vec<ServerState>> {
    let cmd = "show servers state";
    let answer = api.command(cmd)?;
    parse::check_query(cmd, &answer)?;
    parse::parse_servers_state(&answer)
}

/// The server's address: `--addr`, else the named server's in `show servers state`.
fn resolve_addr(config: &[ServerState], opts: &Options) -> Result<SocketAddr> {
    let Some((b, s)) = &opts.server else {
        return opts.addr.ok_or_else(|| Error::Haproxy("give --server BACKEND/SERVER or --addr IP:PORT".into()));
    };
    if !config.iter().any(|st| &st.backend == b) {
        return Err(Error::Haproxy(format!("no backend {b} (`show servers state`)")));
    }
    let st = config
        .iter()
        .find(|st| &st.backend == b && &st.name == s)
        .ok_or_else(|| Error::Haproxy(format!("no server {s} in backend {b} (`show servers state`)")))?;
    let named = st.addr.map(|ip| SocketAddr::new(ip, st.port));
    match (opts.addr, named) {
        (Some(given), Some(named)) => {
            if given != named {
                warn!(%given, %named, "--addr differs from HAProxy's address for the server; filtering on --addr");
            }
            Ok(given)
        }
        (Some(given), None) => Ok(given),
        (None, Some(named)) if named.port() != 0 => Ok(named),
        (None, Some(_)) => {
            Err(Error::Haproxy(format!("server {b}/{s} has port 0 (it uses the client's port): give --addr IP:PORT")))
        }
        (None, None) => Err(Error::Haproxy(format!("server {b}/{s} has no address in HAProxy: give --addr IP:PORT"))),
    }
}
