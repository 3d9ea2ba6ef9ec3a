//! From what the user typed to what will be done: every check that can fail
//! without touching anything happens here (filters, catch-all, durations and
//! their bounds, the namespace, output and log paths), so an error is
//! reported before the first socket could be destroyed.

use std::path::PathBuf;
use std::time::Duration;

use sockkill::filter::Filter;
use sockkill::haproxy::Options as HaproxyOptions;
use sockkill::{audit, metrics, Error, Netns, Result};

use super::args::{Cli, Command, FilterArgs, HaproxyArgs, KillArgs};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Output and logging choices, common to every command.
#[derive(Debug, Clone, Copy)]
pub struct Global {
    pub json: bool,
    pub verbose: u8,
    pub quiet: bool,
}

/// Where the run's records go.
#[derive(Debug, Clone, Default)]
pub struct Records {
    pub audit_log: Option<PathBuf>,
    pub metrics_file: Option<PathBuf>,
}

/// A validated command, ready to run.
#[derive(Debug)]
pub enum Plan {
    List { netns: Option<Netns>, filter: Filter, processes: bool },
    Kill { netns: Option<Netns>, filter: Filter, options: sockkill::KillOptions, records: Records },
    Haproxy { options: Box<HaproxyOptions>, records: Records },
    Completions(clap_complete::Shell),
    Man(Option<PathBuf>),
    Check { netns: Option<Netns> },
}

impl Plan {
    /// The metrics textfile to write, if any.
    pub fn metrics_file(&self) -> Option<&PathBuf> {
        match self {
            Plan::Kill { records, .. } | Plan::Haproxy { records, .. } => records.metrics_file.as_ref(),
            _ => None,
        }
    }
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

fn records(audit_log: Option<PathBuf>, metrics_file: Option<PathBuf>) -> Result<Records> {
    if let Some(p) = &audit_log {
        audit::check_path(p)?;
    }
    if let Some(p) = &metrics_file {
        metrics::check_target(p)?;
    }
    Ok(Records { audit_log, metrics_file })
}

fn filter(args: &FilterArgs) -> Result<Filter> {
    let f = args.to_filter();
    f.validate()?;
    Ok(f)
}

/// Validates the command line into a plan.
pub fn plan(cli: Cli) -> Result<Plan> {
    let plan = match cli.command {
        Command::List { filter: f, processes } => {
            Plan::List { filter: filter(&f)?, netns: open_netns(f.netns.as_deref())?, processes }
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
    let filter = filter(f)?;
    if filter.is_catch_all() && !k.allow_catch_all {
        return Err(Error::CatchAll);
    }
    let window = k.window.map(|w| nonzero("--for", w, DAY)).transpose()?;
    let interval = bounded("--interval", k.interval, MIN_INTERVAL, HOUR)?;
    let records = records(k.audit_log, k.metrics_file)?;
    let netns = open_netns(f.netns.as_deref())?;
    let options = sockkill::KillOptions {
        dry_run: k.dry_run,
        verify: !k.no_verify,
        processes: k.processes,
        max: (k.max > 0 && !k.dry_run).then_some(k.max),
        allow_catch_all: k.allow_catch_all,
        window,
        interval,
        ..sockkill::KillOptions::default()
    };
    Ok(Plan::Kill { netns, filter, options, records })
}

fn haproxy_plan(a: HaproxyArgs) -> Result<Plan> {
    let grace = bounded("--grace", a.grace, Duration::ZERO, HOUR)?;
    let settle = bounded("--settle", a.settle, Duration::ZERO, HOUR)?;
    let api_timeout = nonzero("--api-timeout", a.api_timeout, HOUR)?;
    let window = a.window.map(|w| nonzero("--for", w, DAY)).transpose()?;
    let floor = grace.saturating_add(settle);
    let deadline = match a.deadline {
        Some(d) => {
            let d = nonzero("--deadline", d, DAY)?;
            if d < floor {
                return Err(Error::Usage(format!(
                    "--deadline {d:?} is shorter than --grace + --settle ({floor:?}): nothing could ever be judged clean"
                )));
            }
            d
        }
        None => match window {
            Some(w) => w.saturating_add(settle).max(floor),
            None => DEFAULT_DEADLINE.max(floor),
        },
    };
    let records = records(a.audit_log, a.metrics_file)?;
    let options = HaproxyOptions {
        socket: a.socket,
        master_socket: a.master_socket,
        server: a.server,
        addr: a.addr,
        pids: a.pid,
        netns: a.netns,
        no_shutdown: a.no_shutdown,
        dry_run: a.dry_run,
        grace,
        settle,
        deadline,
        api_timeout,
        poll: Duration::from_millis(100),
        window,
        max: (a.max > 0).then_some(a.max),
        cancel: None,
        audit: None,
    };
    Ok(Plan::Haproxy { options: Box::new(options), records })
}
