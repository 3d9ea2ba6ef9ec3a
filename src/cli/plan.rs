//! From what the user typed to what will be done, converted once: the
//! command line's own bounds (durations, record paths, the namespace) are
//! checked here, and the library's plans ([`KillPlan`], [`HaproxyPlan`]) check
//! the rest (filter, catch-all, timing rules) exactly once. An error is
//! reported before the first socket could be destroyed.

use std::path::PathBuf;
use std::time::Duration;

use sockkill::filter::Filter;
use sockkill::haproxy::{Options as HaproxyOptions, Plan as HaproxyPlan};
use sockkill::{audit, metrics, Error, KillPlan, Netns, Result};

use super::args::{Cli, Command, FilterArgs, HaproxyArgs, KillArgs};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Output and logging choices, common to every command.
#[derive(Debug, Clone, Copy)]
pub struct Global {
    pub json: bool,
    pub verbose: u8,
    pub quiet: bool,
}

/// Where the run's audit trail goes (the metrics file is known before the
/// plan: see [`metrics_target`]).
#[derive(Debug, Clone, Default)]
pub struct Records {
    pub audit_log: Option<PathBuf>,
}

/// A validated command, ready to run.
#[derive(Debug)]
pub enum Plan {
    List { netns: Option<Netns>, filter: Box<Filter>, processes: bool },
    Kill { netns: Option<Netns>, plan: Box<KillPlan>, records: Records },
    Haproxy { plan: Box<HaproxyPlan>, records: Records },
    Completions(clap_complete::Shell),
    Man(Option<PathBuf>),
    Check { netns: Option<Netns> },
}

/// The subcommand's name, before its arguments are validated.
pub fn command_name(cli: &Cli) -> &'static str {
    match cli.command {
        Command::List { .. } => "list",
        Command::Kill { .. } => "kill",
        Command::Haproxy(_) => "haproxy",
        Command::Completions { .. } => "completions",
        Command::Man { .. } => "man",
        Command::Check { .. } => "check",
    }
}

/// The metrics textfile a command line asks for, known before it is validated
/// (an early failure writes one too), and the `server` label of a haproxy run.
pub fn metrics_target(cli: &Cli) -> (Option<PathBuf>, Option<String>) {
    match &cli.command {
        Command::Kill { kill, .. } => (kill.metrics_file.clone(), None),
        Command::Haproxy(a) => (
            a.metrics_file.clone(),
            // The lingering sweep labels its findings per server instead.
            a.server
                .as_ref()
                .map(|(b, s)| format!("{b}/{s}"))
                .or(a.addr.map(|a| a.to_string()))
                .filter(|_| !a.lingering),
        ),
        _ => (None, None),
    }
}

fn bounded(flag: &str, d: Duration, min: Duration, max: Duration) -> Result<Duration> {
    if d < min {
        let what = if min.is_zero() { String::new() } else { format!(" (at least {min:?})") };
        return Err(Error::Usage(format!("{flag} {d:?} is too short{what}")));
    }
    if d > max {
        return Err(Error::Usage(format!("{flag} {d:?} is too long (at most {max:?})")));
    }
    Ok(d)
}

fn nonzero(flag: &str, d: Duration, max: Duration) -> Result<Duration> {
    if d.is_zero() {
        return Err(Error::Usage(format!("{flag} must be longer than 0")));
    }
    bounded(flag, d, Duration::ZERO, max)
}

fn open_netns(spec: Option<&str>) -> Result<Option<Netns>> {
    spec.map(Netns::open).transpose()
}

/// The filter the flags describe, with what depends on the system resolved:
/// cgroup paths to ids, interface names to indexes in the target namespace.
fn filter_of(f: &FilterArgs, netns: Option<&Netns>) -> Result<Filter> {
    let mut filter = f.to_filter()?;
    filter.cgroups = f.cgroup.iter().map(|p| sockkill::cgroup::resolve(p)).collect::<Result<_>>()?;
    filter.devs = f.dev.iter().map(|d| sockkill::netns::interface_index(netns, d)).collect::<Result<_>>()?;
    if let Some(e) = filter.expression.as_mut() {
        sockkill::filter::expr::resolve(e, netns)?;
    }
    Ok(filter)
}

/// Checks the record files before anything is done: only a missing path or
/// a regular file is ever written.
fn records(audit_log: Option<PathBuf>, metrics_file: Option<&PathBuf>) -> Result<Records> {
    if let Some(p) = &audit_log {
        audit::check_path(p)?;
    }
    if let Some(p) = metrics_file {
        metrics::probe(p)?;
    }
    Ok(Records { audit_log })
}

/// Validates the command line into a plan.
pub fn plan(cli: Cli) -> Result<Plan> {
    let plan = match cli.command {
        // `list` changes nothing: the library checks the filter when it runs.
        Command::List { filter: f, processes } => {
            let netns = open_netns(f.netns.as_deref())?;
            Plan::List { filter: Box::new(filter_of(&f, netns.as_ref())?), netns, processes }
        }
        Command::Kill { filter: f, kill } => kill_plan(&f, kill)?,
        Command::Haproxy(a) => haproxy_plan(a)?,
        Command::Completions { shell } => Plan::Completions(shell),
        Command::Man { out } => Plan::Man(out),
        Command::Check { netns } => Plan::Check { netns: open_netns(netns.as_deref())? },
    };
    Ok(plan)
}

fn kill_plan(f: &FilterArgs, k: KillArgs) -> Result<Plan> {
    let window = k.window.map(|w| nonzero("--for", w, DAY)).transpose()?;
    let interval = bounded("--interval", k.interval, MIN_INTERVAL, HOUR)?;
    let options = sockkill::KillOptions {
        dry_run: k.dry_run,
        verify: !k.no_verify,
        processes: k.processes,
        max: (k.max > 0).then_some(k.max),
        allow_catch_all: k.allow_catch_all,
        window,
        interval,
        ..sockkill::KillOptions::default()
    };
    let netns = open_netns(f.netns.as_deref())?;
    let plan = KillPlan::new(filter_of(f, netns.as_ref())?, options)?;
    let records = records(k.audit_log, k.metrics_file.as_ref())?;
    Ok(Plan::Kill { netns, plan: Box::new(plan), records })
}

fn haproxy_plan(a: HaproxyArgs) -> Result<Plan> {
    let options = HaproxyOptions {
        socket: a.socket,
        master_socket: a.master_socket,
        server: a.server,
        addr: a.addr,
        lingering: a.lingering,
        include_maint: a.include_maint,
        pids: a.pid,
        netns: a.netns,
        no_shutdown: a.no_shutdown,
        dry_run: a.dry_run,
        grace: a.grace.map(|g| bounded("--grace", g, Duration::ZERO, HOUR)).transpose()?,
        settle: bounded("--settle", a.settle, Duration::ZERO, HOUR)?,
        deadline: a.deadline.map(|d| nonzero("--deadline", d, DAY)).transpose()?,
        api_timeout: nonzero("--api-timeout", a.api_timeout, HOUR)?,
        poll: sockkill::defaults::INTERVAL,
        window: a.window.map(|w| nonzero("--for", w, DAY)).transpose()?,
        max: (a.max > 0).then_some(a.max),
        cancel: None,
        audit: None,
    };
    let plan = HaproxyPlan::new(options)?;
    let records = records(a.audit_log, a.metrics_file.as_ref())?;
    Ok(Plan::Haproxy { plan: Box::new(plan), records })
}
