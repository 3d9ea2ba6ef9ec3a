//! Command-line definitions (clap) and the glue that turns them into library calls.

use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use crate::engine::{Engine, KillOptions, Query, CANCEL};
use crate::error::{Error, Result};
use crate::filter::{parse_cidr, Family, Filter, PortRange, StateSet};
use crate::netns::Netns;
use crate::{check, report};

const EXIT_CODES: &str = "\
Exit codes:
  list, check:  0 success, 2 error
  kill:         0 no matching socket remains at the end (a dry run: nothing matched)
                1 matching sockets remain, some destroys failed, or interrupted
                2 usage or environment error (bad filter, refused catch-all, no such
                  namespace, no permission, no kernel support): nothing destroyed";

/// Find TCP sockets by address through sock_diag and destroy them (SOCK_DESTROY).
#[derive(Debug, Parser)]
#[command(name = "sockkill", version, after_help = EXIT_CODES, max_term_width = 100)]
pub struct Cli {
    /// More log output on stderr (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// One JSON document on stdout instead of the human table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List matching TCP sockets (read-only; needs no privilege in the current namespace).
    #[command(after_help = EXIT_CODES)]
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Show the owning pid/command of each socket (scans /proc: expensive on busy hosts).
        #[arg(short, long)]
        processes: bool,
    },
    /// Destroy matching TCP sockets, then verify that none remain.
    #[command(after_help = EXIT_CODES)]
    Kill {
        #[command(flatten)]
        filter: FilterArgs,
        /// Show the owning pid/command of each socket (scans /proc).
        #[arg(short, long)]
        processes: bool,
        /// Do everything but destroy; exits 1 when something matches (a detector).
        #[arg(long)]
        dry_run: bool,
        /// Skip the final dump that checks nothing matches any more.
        #[arg(long)]
        no_verify: bool,
        /// Allow a filter that does not narrow the address space (kills everything matching).
        #[arg(long)]
        allow_catch_all: bool,
    },
    /// Self-probe: create a loopback pair, list it, destroy it, say what works.
    #[command(after_help = EXIT_CODES)]
    Check {
        /// Probe inside this namespace (NAME under /run/netns, PATH, or PID) instead of a throwaway one.
        #[arg(long, value_name = "NS")]
        netns: Option<String>,
    },
}

/// The socket filter shared by list and kill.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Peer address or CIDR (a bare IP means /32 or /128); repeatable (OR).
    #[arg(long, value_name = "CIDR", value_parser = cidr)]
    pub dst: Vec<IpNet>,
    /// Peer port or range LO-HI; repeatable (OR).
    #[arg(long, value_name = "PORT", value_parser = port_range)]
    pub dport: Vec<PortRange>,
    /// Local address or CIDR; repeatable (OR).
    #[arg(long, value_name = "CIDR", value_parser = cidr)]
    pub src: Vec<IpNet>,
    /// Local port or range LO-HI; repeatable (OR).
    #[arg(long, value_name = "PORT", value_parser = port_range)]
    pub sport: Vec<PortRange>,
    /// TCP state as ss names it (established, syn-sent, ..., listening, all, connected);
    /// repeatable. Default: every state except listening and time-wait.
    #[arg(long = "state", value_name = "STATE", value_parser = state)]
    pub states: Vec<StateSet>,
    /// IPv4 only (including IPv4-mapped IPv6 sockets).
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// IPv6 only (excluding IPv4-mapped sockets).
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Only sockets held open by this process; repeatable.
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Vec<u32>,
    /// Network namespace: NAME under /run/netns, a PATH (contains /), or a PID (its /proc/PID/ns/net).
    #[arg(long, value_name = "NS")]
    pub netns: Option<String>,
}

fn cidr(s: &str) -> std::result::Result<IpNet, String> {
    parse_cidr(s).map_err(|e| e.to_string())
}
fn port_range(s: &str) -> std::result::Result<PortRange, String> {
    s.parse::<PortRange>().map_err(|e| e.to_string())
}
fn state(s: &str) -> std::result::Result<StateSet, String> {
    StateSet::parse_name(s).map_err(|e| e.to_string())
}

impl FilterArgs {
    /// The library filter these flags describe.
    pub fn to_filter(&self) -> Filter {
        let states = if self.states.is_empty() {
            StateSet::DEFAULT
        } else {
            self.states.iter().fold(StateSet::EMPTY, |acc, s| acc.union(*s))
        };
        Filter {
            dst: self.dst.clone(),
            src: self.src.clone(),
            dport: self.dport.clone(),
            sport: self.sport.clone(),
            states,
            family: match (self.ipv4, self.ipv6) {
                (true, _) => Some(Family::V4),
                (_, true) => Some(Family::V6),
                _ => None,
            },
            pids: self.pid.clone(),
        }
    }
}

/// Writes through `f`, treating a closed stdout (EPIPE) as a normal end.
fn emit(f: impl FnOnce(&mut io::StdoutLock<'_>) -> io::Result<()>) -> Result<()> {
    let stdout = io::stdout();
    let mut lock = stdout.lock();
    match f(&mut lock).and_then(|_| lock.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Error::Other(format!("writing output: {e}"))),
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    CANCEL.store(true, Ordering::Relaxed);
}

/// SIGINT/SIGTERM finish the batch in flight and end the kill with a partial summary.
fn install_cancel_handler() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if let Err(e) = unsafe { sigaction(sig, &action) } {
            tracing::warn!(%e, ?sig, "cannot install signal handler");
        }
    }
}

fn open_netns(spec: Option<&str>) -> Result<Option<Netns>> {
    spec.map(Netns::open).transpose()
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    let json = cli.json;
    match cli.command {
        Command::List { filter, processes } => {
            let started = Instant::now();
            let ns = open_netns(filter.netns.as_deref())?;
            let query = Query::new(filter.to_filter())?;
            let mut engine = Engine::open(ns.as_ref())?;
            let sockets = engine.list(&query, processes)?;
            let ms = started.elapsed().as_millis() as u64;
            emit(|out| report::write_list(out, json, filter.netns.as_deref(), query.filter(), &sockets, ms))?;
            Ok(0)
        }
        Command::Kill { filter, processes, dry_run, no_verify, allow_catch_all } => {
            let f = filter.to_filter();
            let query = Query::new(f)?;
            if query.filter().is_catch_all() && !allow_catch_all {
                return Err(Error::CatchAll);
            }
            let ns = open_netns(filter.netns.as_deref())?;
            let mut engine = Engine::open(ns.as_ref())?;
            install_cancel_handler();
            let opts = KillOptions { dry_run, verify: !no_verify, processes, ..KillOptions::default() };
            let rep = engine.kill(&query, &opts)?;
            emit(|out| report::write_kill(out, json, filter.netns.as_deref(), query.filter(), &rep))?;
            if !json {
                // The summary also goes to the log, so it survives a closed stdout.
                tracing::debug!("{}", report::summary_line(&rep));
            }
            Ok(rep.exit_code())
        }
        Command::Check { netns } => {
            let ns = open_netns(netns.as_deref())?;
            let rep = check::check(ns.as_ref())?;
            emit(|out| report::write_check(out, json, &rep))?;
            Ok(if rep.ok { 0 } else { 2 })
        }
    }
}
