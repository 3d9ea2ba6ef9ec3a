//! `sockkill haproxy`: ask HAProxy to let go of a server, watch it do so,
//! then destroy what its processes still hold of that server, and verify —
//! in three steps you can read one at a time: [`discover`] (who answers,
//! which processes, where the server's connections are), [`shut_down`]
//! (HAProxy's own commands, unless told not to), and the engine's loop.
//!
//! This module says what a target is (through [`HaproxyClassifier`]) and talks to
//! HAProxy; the loop itself is the engine's, and it never sees netlink bytes.
//! HAProxy's `wait` (3.0+) runs on its own connection and thread while the
//! loop keeps looking, so what HAProxy closes is timed and what it retries is seen.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use tracing::{info, warn};

use super::api::{Api, Endpoint};
use super::discovery::{self, Topology};
use super::lingering::Sweep;
use super::options::Options;
use super::parse::{self, Info, ServerState};
use super::places::{self, Place, Places, PlacesKernel};
use super::report::{report, Learnt, Report};
use super::target::{HaproxyClassifier, Rule, Target};
use super::wait::{ms, WaitCall};
use crate::audit::AuditLog;
use crate::cancel::Cancel;
use crate::engine::owners::Holders;
use crate::engine::run::{Awaited, Run, WallClock};
use crate::engine::{Engine, Policy};
use crate::error::{Error, HaproxyError, Result};
use crate::netns::Netns;

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

/// What discovery found: who answers, its configuration, the processes
/// and their namespace.
struct Found {
    api: Api,
    info: Info,
    config: Vec<ServerState>,
    server_addr: Option<SocketAddr>,
    topo: Topology,
    ns: Option<Netns>,
}

/// Who answers `--socket`, the current configuration, the server's address,
/// HAProxy's processes and their network namespace. Sends nothing that
/// changes HAProxy.
fn discover(opts: &Options) -> Result<Found> {
    let api = Api::new(Endpoint::parse(&opts.socket), opts.api_timeout, opts.cancel.clone())?;
    let (info, answering) = discovery::identify(&api)?;
    let config = servers_state(&api)?;
    let server_addr = resolve_addr(&config, opts)?;
    let topo = discovery::discover(
        (answering, info.pid),
        opts.master_socket.as_deref(),
        &opts.pids,
        opts.api_timeout,
        opts.cancel.as_ref(),
    )?;
    let pids: Vec<u32> = topo.workers.iter().map(|w| w.pid).collect();
    info!(?pids, master = ?topo.master, "HAProxy processes");
    let ns = discovery::namespace_of(&pids, opts.netns.as_deref())?;
    Ok(Found { api, info, config, server_addr, topo, ns })
}

/// The master CLI, when there is one to reach old workers through.
fn master_api(opts: &Options, topo: &Topology) -> Result<Option<Api>> {
    let Some(cli) = &topo.master_cli else { return Ok(None) };
    match Api::new(cli.clone(), opts.api_timeout, opts.cancel.clone()) {
        Ok(a) => Ok(Some(a)),
        Err(e) if opts.master_socket.is_some() => Err(e),
        Err(e) => {
            warn!(%e, "the master CLI named in the master's command line is not usable: old workers cannot be asked");
            Ok(None)
        }
    }
}

/// The classifier, and the places it watches: the given address, the named
/// server's configured one, then wherever HAProxy's tables name its
/// connections ([`HaproxyClassifier::locate`]).
fn classifier(
    opts: &Options,
    found: Found,
    engine: &mut Engine,
) -> Result<(HaproxyClassifier, Rc<RefCell<Places>>, Learnt0)> {
    let Found { api, info, config, server_addr, topo, ns } = found;
    let pids: Vec<u32> = topo.workers.iter().map(|w| w.pid).collect();
    let holders = Holders::of_running(&pids)?;
    if !holders.pids().contains(&topo.answering.pid) {
        return Err(HaproxyError::Topology(format!(
            "the worker answering the stats socket (pid {}) exited before the first look (a reload?): run again",
            topo.answering.pid
        ))
        .into());
    }
    let listening = places::listening_ports(engine, &holders)?;
    let master = master_api(opts, &topo)?;
    let target = match &opts.server {
        Some((backend, server)) => Target::Named { backend: backend.clone(), server: server.clone() },
        None => Target::Gone,
    };
    let watched = Rc::new(RefCell::new(Places::default()));
    if let Some(a) = server_addr {
        watched.borrow_mut().add(Place::of(a));
    }
    let rule = Rule::new(target, config, listening);
    if let Some(ip) = rule.named_server().and_then(|s| s.addr.map(|ip| SocketAddr::new(ip, s.port))) {
        watched.borrow_mut().add(Place::of(ip));
    }
    let own = Engine::open(ns.as_ref())?;
    let mut classifier = HaproxyClassifier::new(rule, watched.clone(), holders, own, &topo, &info.version, api, master);
    let sweep = if opts.lingering {
        Some(classifier.sweep(opts.include_maint)?)
    } else {
        let located = classifier.locate()?;
        info!(places = ?located, "the server's connections by HAProxy's tables");
        None
    };
    Ok((classifier, watched, Learnt0 { version: info.version, topo, server_addr, sweep }))
}

/// What the report needs of discovery.
struct Learnt0 {
    version: String,
    topo: Topology,
    server_addr: Option<SocketAddr>,
    sweep: Option<Sweep>,
}

/// What HAProxy was sent.
#[derive(Default)]
struct Sent {
    commands: Vec<String>,
    unconfirmed: Vec<String>,
    maintenance: bool,
    wait: Option<WaitCall>,
    failure: Option<Error>,
}

/// HAProxy's own shutdown of the named server: maintenance, its sessions
/// shut, and on 3.0+ `wait srv-removable` on its own connection.
fn shut_down(api: &Api, (b, s): (&str, &str), version: &str, grace: std::time::Duration, clock: WallClock) -> Sent {
    let mut sent = Sent::default();
    for cmd in [format!("set server {b}/{s} state maint"), format!("shutdown sessions server {b}/{s}")] {
        // Sent is sent: once its bytes left, HAProxy may have applied it,
        // whatever becomes of the answer (late, interrupted, unexpected).
        let mut left = false;
        let answer = api.command_tracked(&cmd, &mut left).and_then(|a| parse::expect_empty(&cmd, &a));
        // A known refusal (`Permission denied`, `No such server.`) is HAProxy saying it did nothing.
        let refused = matches!(answer, Err(Error::Haproxy(HaproxyError::Refused { .. })));
        let left = left && !refused;
        if left {
            sent.maintenance |= cmd.ends_with("state maint");
            sent.commands.push(cmd.clone());
        }
        match answer {
            Ok(()) => info!(cmd = %cmd, "sent to HAProxy"),
            Err(e) => {
                if left {
                    warn!(cmd = %cmd, %e, "sent to HAProxy, but its answer is not the expected one: it may have been applied");
                    sent.unconfirmed.push(cmd);
                }
                sent.failure = Some(e);
                return sent;
            }
        }
    }
    if parse::version_at_least(version, 3, 0) {
        // Answered once the server has no session left, or when the grace period ends;
        // the loop keeps looking meanwhile.
        let cmd = format!("wait {}ms srv-removable {b}/{s}", ms(grace));
        match api.spawn(&cmd, grace.saturating_add(api.timeout())) {
            Ok(pending) => {
                sent.commands.push(cmd.clone());
                sent.wait = Some(WaitCall::new(cmd, pending, clock));
            }
            Err(e) => sent.failure = Some(e),
        }
    }
    sent
}

/// Discover, shut down (unless told not to), enforce, report. An `Err`
/// means nothing was changed or destroyed.
pub(super) fn execute(opts: &Options, policy: Policy) -> Result<Report> {
    let clock = WallClock::start();
    let found = discover(opts)?;
    let mut engine = Engine::open(found.ns.as_ref())?;
    if !opts.dry_run && !crate::sys::has_cap_net_admin() {
        return Err(Error::NoPermission);
    }
    let (classifier, watched, known) = classifier(opts, found, &mut engine)?;
    let grace = policy.grace;
    let kernel = PlacesKernel::new(&mut engine, watched.clone())?;
    let mut run = Run::start(kernel, clock, policy, classifier, opts.cancel.as_ref(), opts.audit.as_deref())?;
    let initial = run.matched();
    // HAProxy's own shutdown, unless told not to. Nothing is sent after a signal.
    let mut sent = match (&opts.server, opts.sends_commands()) {
        (Some((b, s)), true) => {
            let api = run.classifier_mut().api().clone();
            shut_down(&api, (b, s), &known.version, grace, clock)
        }
        _ => Sent::default(),
    };
    let (enf, mut classifier) = match sent.failure.take() {
        Some(e) => run.stop(e),
        None => run.finish_awaiting(sent.wait.as_mut().map(|w| w as &mut dyn Awaited)),
    };
    let places = watched.borrow().clone();
    let learnt = Learnt {
        version: known.version,
        topo: known.topo,
        server_addr: known.server_addr,
        sweep: known.sweep,
        places,
        commands_sent: sent.commands,
        unconfirmed: sent.unconfirmed,
        maintenance: sent.maintenance,
        wait: sent.wait,
        initial,
        grace,
        clock,
    };
    Ok(report(opts, enf, &mut classifier, learnt))
}

/// The current worker's servers, every backend.
fn servers_state(api: &Api) -> Result<Vec<ServerState>> {
    let cmd = "show servers state";
    let answer = api.command(cmd)?;
    parse::check_query(cmd, &answer)?;
    parse::parse_servers_state(&answer)
}

/// The server's address: `--addr`, else the named server's in `show servers
/// state`; none for the lingering sweep (it finds its places).
fn resolve_addr(config: &[ServerState], opts: &Options) -> Result<Option<SocketAddr>> {
    if opts.lingering {
        return Ok(None);
    }
    let Some((b, s)) = &opts.server else {
        return opts.addr.map(Some).ok_or_else(|| HaproxyError::NoTarget.into());
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
            Ok(Some(given))
        }
        (Some(given), None) => Ok(Some(given)),
        // Port 0 (the client's port) and port offsets are understood by the places.
        (None, Some(named)) => Ok(Some(named)),
        (None, None) => {
            Err(HaproxyError::NoAddress { backend: b.clone(), server: s.clone(), why: "has no address in HAProxy" }
                .into())
        }
    }
}
