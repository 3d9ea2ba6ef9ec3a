//! Command-line definitions (clap) and the glue that turns them into library calls.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Args, Parser, Subcommand};
use ipnet::IpNet;

use crate::audit::AuditLog;
use crate::engine::{Engine, KillOptions, Query, CANCEL};
use crate::error::{Error, Result};
use crate::filter::{parse_cidr, Family, Filter, PortRange, StateSet};
use crate::netns::Netns;
use crate::{check, haproxy, metrics, report};

/// Default `--max`: see README (blast radius).
pub const DEFAULT_MAX: usize = 10_000;

/// The command line, for the audit log.
fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

const EXIT_CODES: &str = "\
Exit codes:
  list, check:  0 success, 2 error
  kill, haproxy:
                0 no matching socket remains at the end (a dry run: nothing matched)
                1 matching sockets remain, some destroys failed, or interrupted
                2 usage or environment error (bad filter, refused catch-all, no such
                  namespace, no permission, no kernel support, HAProxy unreachable or
                  refusing): nothing destroyed";

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
        /// Refuse, destroying nothing, when more sockets than this match (0 = no limit).
        #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX)]
        max: usize,
        /// Append one JSON line per destroyed socket to FILE, synced before the summary.
        #[arg(long, value_name = "FILE")]
        audit_log: Option<PathBuf>,
        /// Enforcement window: keep destroying new matching connections until
        /// DURATION after the start (e.g. while a rollout propagates).
        #[arg(long = "for", value_name = "DURATION", value_parser = duration, conflicts_with_all = ["dry_run", "no_verify"])]
        window: Option<Duration>,
        /// With --for: how often to dump (one kernel-filtered dump per interval).
        #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = duration, requires = "window")]
        interval: Duration,
        /// Write a Prometheus node_exporter textfile with the run's counts (atomically).
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
    },
    /// HAProxy safety net: take a server out, wait, then destroy the TCP
    /// connections HAProxy's processes still hold to it, and verify.
    #[command(after_help = EXIT_CODES)]
    Haproxy(HaproxyArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `sockkill man | man -l -`.
    Man,
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

/// Options of `sockkill haproxy`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).multiple(true).args(["server", "addr"])))]
pub struct HaproxyArgs {
    /// HAProxy's stats socket (runtime API, `level admin`): a unix socket PATH or HOST:PORT.
    #[arg(long, value_name = "PATH|HOST:PORT")]
    pub socket: String,
    /// The server to take out; its address comes from `show servers state`.
    #[arg(long, value_name = "BACKEND/SERVER", value_parser = backend_server)]
    pub server: Option<(String, String)>,
    /// The server's address, e.g. for a server already removed from the config by a reload.
    #[arg(long, value_name = "IP:PORT", value_parser = server_addr)]
    pub addr: Option<SocketAddr>,
    /// The master CLI socket (`haproxy -W -S ...`): act for every worker `show proc` lists.
    #[arg(long, value_name = "PATH|HOST:PORT")]
    pub master_socket: Option<String>,
    /// Act for these HAProxy processes instead of discovering them; repeatable.
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Vec<u32>,
    /// The processes' network namespace (default: found from /proc/PID/ns/net).
    #[arg(long, value_name = "NS")]
    pub netns: Option<String>,
    /// Send no state-changing command to HAProxy; only enforce.
    #[arg(long)]
    pub no_shutdown: bool,
    /// Change nothing, destroy nothing: report lingering sockets now; exit 1 if any.
    #[arg(long)]
    pub dry_run: bool,
    /// How long HAProxy gets to close the sessions itself.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration)]
    pub grace: Duration,
    /// Clean only once no matching socket was seen for this long.
    #[arg(long, value_name = "DURATION", default_value = "1.5s", value_parser = duration)]
    pub settle: Duration,
    /// Give up (exit 1) when sockets still appear after this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    pub deadline: Duration,
    /// Append one JSON line per destroyed socket to FILE, synced before the summary.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Keep enforcing until DURATION after the start: new connections to the
    /// server are destroyed too; clean is judged at the end of the window.
    #[arg(long = "for", value_name = "DURATION", value_parser = duration, conflicts_with = "dry_run")]
    pub window: Option<Duration>,
    /// Write a Prometheus node_exporter textfile with the run's counts (atomically).
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    /// Timeout for connecting to HAProxy and for each answer.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub api_timeout: Duration,
}

fn backend_server(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('/') {
        Some((b, srv)) if !b.is_empty() && !srv.is_empty() && !srv.contains('/') => {
            Ok((b.to_string(), srv.to_string()))
        }
        _ => Err(format!("expected BACKEND/SERVER, got {s:?}")),
    }
}

fn server_addr(s: &str) -> std::result::Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|_| {
        if s.parse::<std::net::IpAddr>().is_ok() {
            format!("{s:?} has no port: expected IP:PORT (e.g. 10.0.0.7:8080 or [fd00::7]:8080)")
        } else {
            format!("{s:?} is not IP:PORT (e.g. 10.0.0.7:8080 or [fd00::7]:8080)")
        }
    })?;
    if addr.port() == 0 {
        return Err(format!("{s:?}: port 0 is not a server port"));
    }
    Ok(addr)
}

/// `1.5s`, `100ms`, `2m`, or a bare number of seconds.
pub fn duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("bad duration {s:?}: expected e.g. 1.5s, 100ms, 2m"))?;
    Duration::try_from_secs_f64(v * scale).map_err(|_| format!("bad duration {s:?}: must be positive and finite"))
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
fn emit(f: impl FnOnce(&mut io::BufWriter<io::StdoutLock<'_>>) -> io::Result<()>) -> Result<()> {
    // Block-buffered: Rust's stdout alone writes once per line (100k rows = 100k syscalls).
    let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    match f(&mut out).and_then(|_| out.flush()) {
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
    {
        use std::io::IsTerminal;
        report::set_color(io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()));
    }
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
        Command::Kill {
            filter,
            processes,
            dry_run,
            no_verify,
            allow_catch_all,
            max,
            audit_log,
            window,
            interval,
            metrics_file,
        } => {
            let f = filter.to_filter();
            let query = Query::new(f)?;
            if query.filter().is_catch_all() && !allow_catch_all {
                return Err(Error::CatchAll);
            }
            let ns = open_netns(filter.netns.as_deref())?;
            let mut engine = Engine::open(ns.as_ref())?;
            if let Some(path) = &audit_log {
                engine.set_audit(Some(Arc::new(AuditLog::open(path, command_line(), filter.netns.clone())?)));
            }
            install_cancel_handler();
            let max = (max > 0 && !dry_run).then_some(max);
            let opts =
                KillOptions { dry_run, verify: !no_verify, processes, max, window, interval, ..KillOptions::default() };
            let rep = engine.kill(&query, &opts)?;
            if let Some(path) = &metrics_file {
                let s = &rep.summary;
                let m = metrics::Metrics {
                    command: "kill",
                    matched: s.matched,
                    destroyed: s.destroyed,
                    already_gone: s.already_gone,
                    failed: s.failed + s.unacknowledged,
                    remaining: s.remaining.unwrap_or(0),
                    duration: Duration::from_millis(s.duration_ms),
                    exit_code: rep.exit_code(),
                };
                metrics::write(path, &m)?;
            }
            emit(|out| report::write_kill(out, json, filter.netns.as_deref(), query.filter(), &rep))?;
            if !json {
                // The summary also goes to the log, so it survives a closed stdout.
                tracing::debug!("{}", report::summary_line(&rep));
            }
            Ok(rep.exit_code())
        }
        Command::Haproxy(a) => {
            let opts = haproxy::Options {
                socket: a.socket,
                master_socket: a.master_socket,
                server: a.server,
                addr: a.addr,
                pids: a.pid,
                netns: a.netns,
                no_shutdown: a.no_shutdown,
                dry_run: a.dry_run,
                grace: a.grace,
                settle: a.settle,
                deadline: a.deadline,
                api_timeout: a.api_timeout,
                poll: Duration::from_millis(100),
                audit_log: a.audit_log,
                command_line: command_line(),
                window: a.window,
            };
            install_cancel_handler();
            let rep = haproxy::run(&opts)?;
            if let Some(path) = &a.metrics_file {
                let count = |o| rep.destroyed.iter().filter(|x| x.outcome == o).count();
                let m = metrics::Metrics {
                    command: "haproxy",
                    matched: rep.initial,
                    destroyed: count(crate::Outcome::Destroyed),
                    already_gone: count(crate::Outcome::AlreadyGone),
                    failed: count(crate::Outcome::Failed) + count(crate::Outcome::Unacknowledged),
                    remaining: rep.remaining.len(),
                    duration: Duration::from_millis(rep.duration_ms),
                    exit_code: rep.exit_code(),
                };
                metrics::write(path, &m)?;
            }
            emit(|out| report::write_haproxy(out, json, &rep))?;
            Ok(rep.exit_code())
        }
        Command::Completions { shell } => {
            emit(|out| {
                clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "sockkill", out);
                Ok(())
            })?;
            Ok(0)
        }
        Command::Man => {
            emit(|out| clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(out))?;
            Ok(0)
        }
        Command::Check { netns } => {
            let ns = open_netns(netns.as_deref())?;
            let rep = check::check(ns.as_ref())?;
            emit(|out| report::write_check(out, json, &rep))?;
            Ok(if rep.ok { 0 } else { 2 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(duration("3").unwrap(), Duration::from_secs(3));
        for bad in ["", "-1s", "fast", "1h", "NaNs", "infs"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_haproxy_targets() {
        assert_eq!(backend_server("be/s1").unwrap(), ("be".to_string(), "s1".to_string()));
        for bad in ["be", "/s1", "be/", "a/b/c"] {
            assert!(backend_server(bad).is_err(), "{bad}");
        }
        assert_eq!(server_addr("10.0.0.7:80").unwrap(), "10.0.0.7:80".parse().unwrap());
        assert!(server_addr("10.0.0.7").unwrap_err().contains("no port"));
        assert!(server_addr("[fd00::7]:80").is_ok());
        assert!(server_addr("10.0.0.7:0").is_err());
        assert!(server_addr("host:80").is_err());
    }
}
