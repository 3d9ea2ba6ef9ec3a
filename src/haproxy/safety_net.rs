//! `sockkill haproxy`: ask HAProxy to let go of a server, watch it do so,
//! then destroy what its processes still hold to that server, and verify.
//!
//! This module says what a target is (through [`HaproxyJudge`]) and talks to
//! HAProxy; the loop itself is the engine's, and it never sees netlink bytes.
//! HAProxy's `wait` (3.0+) runs on its own connection and thread while the
//! loop keeps looking, so what HAProxy closes is timed and what it retries is seen.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tracing::{info, warn};

use super::api::{Api, Endpoint, Pending};
use super::attribution::Tables;
use super::discovery::{self, Topology, Worker};
use super::judge::{Closed, HaproxyJudge, Rule, Target};
use super::parse::{self, ServerState, WaitAnswer};
use super::places::{self, Place, Places, PlacesKernel};
use crate::audit::AuditLog;
use crate::cancel::Cancel;
use crate::diag::Outcome;
use crate::engine::owners::Holders;
use crate::engine::run::{Awaited, Clock, Run, WallClock};
use crate::engine::{Engine, Ledger, Policy, RunReport, Spared, Summary, Verdict};
use crate::error::{Error, HaproxyError, Result};
use crate::socket::TcpSocket;

/// The grace period when commands are sent to HAProxy and none is given.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);
/// The deadline when none is given (or grace + settle, or the window + settle, when longer).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

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
    /// How long HAProxy gets to close the sessions itself; `None`: [`DEFAULT_GRACE`]
    /// when commands are sent to HAProxy, none when nothing is (`--addr` alone,
    /// `--no-shutdown`): then HAProxy was asked for nothing and closes nothing.
    pub grace: Option<Duration>,
    /// Clean only once no target was seen, and nothing destroyed, for this long.
    pub settle: Duration,
    /// Give up (not clean) this long after the start; `None`: [`DEFAULT_DEADLINE`],
    /// or grace + settle (with `--for`: the window + settle) when longer.
    pub deadline: Option<Duration>,
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

impl Options {
    /// Options for `socket` and a target, with the command line's defaults.
    pub fn new(socket: impl Into<String>) -> Options {
        Options {
            socket: socket.into(),
            master_socket: None,
            server: None,
            addr: None,
            pids: Vec::new(),
            netns: None,
            no_shutdown: false,
            dry_run: false,
            grace: None,
            settle: Duration::from_millis(1500),
            deadline: None,
            api_timeout: Duration::from_secs(5),
            poll: Duration::from_millis(100),
            window: None,
            max: Some(10_000),
            cancel: None,
            audit: None,
        }
    }

    /// Whether state-changing commands will be sent to HAProxy.
    pub fn sends_commands(&self) -> bool {
        self.server.is_some() && !self.no_shutdown && !self.dry_run
    }

    /// The grace period in effect (see [`Options::grace`]).
    pub fn grace(&self) -> Duration {
        self.grace.unwrap_or(if self.sends_commands() { DEFAULT_GRACE } else { Duration::ZERO })
    }

    /// The loop's policy from these options, checked once. Errors when no
    /// server is named, or the deadline leaves no room to ever be judged clean.
    pub fn policy(&self) -> Result<Policy> {
        if self.server.is_none() && self.addr.is_none() {
            return Err(HaproxyError::NoTarget.into());
        }
        if self.poll.is_zero() || self.api_timeout.is_zero() || self.window.is_some_and(|w| w.is_zero()) {
            return Err(Error::Usage(
                "the poll interval, the API timeout and the --for window must be longer than 0".into(),
            ));
        }
        let grace = self.grace();
        let floor = grace.saturating_add(self.settle);
        let deadline = match self.deadline {
            Some(d) if d < floor => {
                return Err(Error::Usage(format!(
                "--deadline {d:?} is shorter than --grace + --settle ({floor:?}): nothing could ever be judged clean"
            )))
            }
            Some(d) => d,
            None => match self.window {
                Some(w) => w.saturating_add(self.settle).max(floor),
                None => DEFAULT_DEADLINE.max(floor),
            },
        };
        Ok(Policy {
            dry_run: self.dry_run,
            verify: true,
            passes: None,
            grace,
            settle: self.settle,
            deadline: Some(deadline),
            window: self.window,
            interval: self.poll,
            max: self.max,
        })
    }
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
    /// Targets first seen after the first destroy (HAProxy retrying, new connections).
    pub appeared_after_first_destroy: usize,
    /// The verdict is `clean`: nothing remains and nothing is ambiguous.
    pub clean: bool,
    /// The verdict's word.
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
    /// prints (port 0: the client's port; a port offset prints unmarked).
    pub server_addr: SocketAddr,
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
    /// The verdict is `clean`: nothing remains and nothing is ambiguous.
    pub clean: bool,
    /// The verdict: `clean`, `remaining`, `unsettled`, `ambiguous`, `interrupted`, `failed`.
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

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// HAProxy's `wait <grace> srv-removable` on its own connection, polled by the loop.
struct WaitCall {
    cmd: String,
    pending: Option<Pending>,
    clock: WallClock,
    answer: Option<WaitAnswer>,
    at_ms: Option<u64>,
    error: Option<Error>,
}

impl Awaited for WaitCall {
    fn poll(&mut self) -> Option<bool> {
        let answer = self.pending.as_mut()?.try_take()?;
        self.pending = None;
        self.at_ms = Some(ms(self.clock.now()));
        match answer.and_then(|a| parse::parse_wait(&self.cmd, &a)) {
            Ok(a) => {
                info!(cmd = %self.cmd, answer = ?a, at_ms = self.at_ms, "HAProxy answered");
                self.answer = Some(a);
                // `Done.`: HAProxy says the server has no session left; waiting longer is pointless.
                Some(a == WaitAnswer::Done)
            }
            Err(e) => {
                warn!(%e, "no usable answer to `wait`: enforcing without it");
                self.error = Some(e);
                Some(false)
            }
        }
    }
}

impl WaitCall {
    /// At the end of the run: a short last chance for an answer still pending, then abandoned.
    fn settle(&mut self, patience: Duration) {
        if let Some(p) = self.pending.as_mut() {
            let _ = p.wait(patience);
        }
        if self.pending.is_some() && self.poll().is_none() {
            self.pending = None; // dropping it closes the connection: HAProxy ends the wait
            self.error = Some(Error::Internal("`wait` was still unanswered when the run ended".into()));
        }
    }
}

/// Everything the run learnt besides the engine's report.
struct Learnt {
    version: String,
    topo: Topology,
    server_addr: SocketAddr,
    places: Places,
    commands_sent: Vec<String>,
    unconfirmed: Vec<String>,
    maintenance: bool,
    wait: Option<WaitCall>,
    initial: usize,
    grace: Duration,
    clock: WallClock,
}

/// Options that passed every check that needs nothing from the system, and
/// the loop's policy made from them (once).
#[derive(Debug)]
pub struct Plan {
    options: Options,
    policy: Policy,
}

impl Plan {
    /// Checks `options` (see [`Options::policy`]).
    pub fn new(options: Options) -> Result<Plan> {
        let policy = options.policy()?;
        Ok(Plan { options, policy })
    }

    /// Attaches what stops the run (a signal) and where destroyed sockets are recorded.
    pub fn attach(&mut self, cancel: Option<Cancel>, audit: Option<Arc<AuditLog>>) {
        self.options.cancel = cancel;
        self.options.audit = audit;
    }

    /// The options.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Runs the safety net. An `Err` means nothing was changed or destroyed;
    /// anything that goes wrong later is in the report's `error`.
    pub fn run(self) -> Result<Report> {
        execute(&self.options, self.policy)
    }
}

/// Runs the safety net with `opts` (checked first). An `Err` means nothing
/// was changed or destroyed; anything that goes wrong later is in the
/// report's `error`.
pub fn run(opts: &Options) -> Result<Report> {
    Plan::new(opts.clone())?.run()
}

fn execute(opts: &Options, policy: Policy) -> Result<Report> {
    let clock = WallClock::start();
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
    if !opts.dry_run && !crate::sys::has_cap_net_admin() {
        return Err(Error::NoPermission);
    }
    let holders = Holders::new(&pids)?;
    let listening = places::listening_ports(&mut engine, &holders)?;
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
    // Where to look: the given address, the named server's configured one,
    // then wherever HAProxy's tables name its connections.
    let watched = Rc::new(RefCell::new(Places::default()));
    watched.borrow_mut().add(Place::of(server_addr));
    let rule = Rule::new(target, config, listening);
    if let Some(named) = rule.named_server() {
        if let Some(ip) = named.addr {
            watched.borrow_mut().add(Place::of(SocketAddr::new(ip, named.port)));
        }
    }
    let mut judge = HaproxyJudge::new(
        rule,
        watched.clone(),
        holders,
        Engine::open(ns.as_ref())?,
        &topo,
        &info.version,
        api,
        master_api,
    );
    let located = judge.locate()?;
    info!(places = ?located, "the server's connections by HAProxy's tables");
    let grace = policy.grace;
    let kernel = PlacesKernel::new(&mut engine, watched.clone())?;
    let mut run = Run::start(kernel, clock, policy, judge, cancel, opts.audit.as_deref())?;
    let initial = run.matched();

    // HAProxy's own shutdown, unless told not to. Nothing is sent after a signal.
    let mut commands_sent = Vec::new();
    let mut unconfirmed = Vec::new();
    let mut maintenance = false;
    let mut failure = None;
    let mut wait = None;
    if let (Some((b, s)), true) = (&opts.server, opts.sends_commands()) {
        let api = run.judge_mut().api().clone();
        for cmd in [format!("set server {b}/{s} state maint"), format!("shutdown sessions server {b}/{s}")] {
            // Sent is sent: once its bytes left, HAProxy may have applied it,
            // whatever becomes of the answer (late, interrupted, unexpected).
            let mut sent = false;
            let answer = api.command_tracked(&cmd, &mut sent).and_then(|a| parse::expect_empty(&cmd, &a));
            // A known refusal (`Permission denied`, `No such server.`) is HAProxy saying it did nothing.
            let refused = matches!(answer, Err(Error::Haproxy(HaproxyError::Refused { .. })));
            let sent = sent && !refused;
            if sent {
                maintenance |= cmd.ends_with("state maint");
                commands_sent.push(cmd.clone());
            }
            match answer {
                Ok(()) => info!(cmd = %cmd, "sent to HAProxy"),
                Err(e) => {
                    if sent {
                        warn!(cmd = %cmd, %e, "sent to HAProxy, but its answer is not the expected one: it may have been applied");
                        unconfirmed.push(cmd);
                    }
                    failure = Some(e);
                    break;
                }
            }
        }
        if failure.is_none() && parse::version_at_least(&info.version, 3, 0) {
            // Answered once the server has no session left, or when the grace period ends;
            // the loop keeps looking meanwhile.
            let cmd = format!("wait {}ms srv-removable {b}/{s}", ms(grace));
            match api.spawn(&cmd, grace.saturating_add(api.timeout())) {
                Ok(pending) => {
                    commands_sent.push(cmd.clone());
                    wait =
                        Some(WaitCall { cmd, pending: Some(pending), clock, answer: None, at_ms: None, error: None });
                }
                Err(e) => failure = Some(e),
            }
        }
    }
    let (enf, mut judge) = match failure {
        Some(e) => run.stop(e),
        None => run.finish_awaiting(wait.as_mut().map(|w| w as &mut dyn Awaited)),
    };
    let places = watched.borrow().clone();
    let learnt = Learnt {
        version: info.version,
        topo,
        server_addr,
        places,
        commands_sent,
        unconfirmed,
        maintenance,
        wait,
        initial,
        grace,
        clock,
    };
    Ok(report(opts, enf, &mut judge, learnt))
}

fn report(opts: &Options, mut enf: RunReport, judge: &mut HaproxyJudge, mut l: Learnt) -> Report {
    let cancelled = opts.cancel.as_ref().is_some_and(Cancel::is_cancelled);
    if let Some(w) = l.wait.as_mut() {
        w.settle(if cancelled { Duration::ZERO } else { Duration::from_millis(200) });
    }
    // A command that changed HAProxy's state counts as done for the exit code.
    enf.judge(l.maintenance || !l.commands_sent.is_empty());
    let verdict = enf.verdict();
    let abandoned = opts.cancel.as_ref().is_some_and(Cancel::is_abandoned);
    let scur = if abandoned { None } else { scur(judge.api(), opts) };
    let count = |o: fn(&Outcome) -> bool| enf.sockets.count(|x| o(&x));
    let remaining = enf.remaining.take().unwrap_or_default();
    let summary = HaproxySummary {
        initial: l.initial,
        closed_by_haproxy: judge.closed.len(),
        destroyed: count(|o| *o == Outcome::Destroyed),
        already_gone: count(|o| *o == Outcome::AlreadyGone),
        failed: count(|o| matches!(o, Outcome::Failed(_) | Outcome::Unacknowledged | Outcome::NotFound)),
        remaining: remaining.len(),
        other_server: enf.other_server.len(),
        ambiguous: enf.ambiguous.len(),
        appeared_after_first_destroy: enf.summary.appeared_after_first_destroy,
        clean: verdict.clean(),
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
        places: l.places,
        commands_sent: l.commands_sent,
        commands_unconfirmed: l.unconfirmed,
        server_left_in_maintenance: l.maintenance,
        wait_answer,
        wait_answered_at_ms,
        wait_error,
        grace_ms: ms(l.grace),
        initial: l.initial,
        closed_by_haproxy: std::mem::take(&mut judge.closed),
        destroyed: enf.sockets,
        remaining,
        other_server: enf.other_server,
        ambiguous: enf.ambiguous,
        workers_exited: judge.exited().to_vec(),
        scur,
        tables_read: judge.tables().clone(),
        clean: verdict.clean(),
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
        return opts.addr.ok_or_else(|| HaproxyError::NoTarget.into());
    };
    if !config.iter().any(|st| &st.backend == b) {
        return Err(HaproxyError::NoBackend { backend: b.clone() }.into());
    }
    let st = config
        .iter()
        .find(|st| &st.backend == b && &st.name == s)
        .ok_or_else(|| HaproxyError::NoServer { backend: b.clone(), server: s.clone() })?;
    let named = st.addr.map(|ip| SocketAddr::new(ip, st.port));
    match (opts.addr, named) {
        (Some(given), Some(named)) => {
            if given != named {
                warn!(%given, %named, "--addr differs from HAProxy's address for the server; filtering on --addr");
            }
            Ok(given)
        }
        (Some(given), None) => Ok(given),
        // Port 0 (the client's port) and port offsets are understood by the places.
        (None, Some(named)) => Ok(named),
        (None, None) => {
            Err(HaproxyError::NoAddress { backend: b.clone(), server: s.clone(), why: "has no address in HAProxy" }
                .into())
        }
    }
}
