//! The command line as the user typed it (clap definitions): parsing only.
//! Cross-checks and everything that needs the system happen in `plan`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};
use ipnet::IpNet;
use sockkill::filter::{parse_cidr, Family, Filter, PortRange, Protocols, StateSet};

/// Default `--max`: see README (blast radius).
pub const DEFAULT_MAX: usize = sockkill::defaults::MAX;

pub const EXIT_CODES: &str = "\
Exit codes:
  list, check:  0 success, 2 error
  kill, haproxy:
                0 no matching socket remains at the end (a dry run: nothing matches)
                1 matching sockets remain, or a signal or an error stopped the run
                  after something was destroyed (or HAProxy's state was changed);
                  the report is printed all the same
                2 error or signal before anything was done: nothing destroyed";

/// Find TCP sockets by address through sock_diag and destroy them (SOCK_DESTROY).
#[derive(Debug, Parser)]
#[command(name = "sockkill", version, disable_help_flag = true, disable_help_subcommand = true)]
#[command(after_help = EXIT_CODES, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes, listed after the subcommand's own.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// More log output on stderr (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// One JSON document on stdout instead of the human table (also for errors).
    #[arg(long, global = true)]
    pub json: bool,
    /// Print help.
    #[arg(short, long, action = clap::ArgAction::Help, global = true)]
    help: Option<bool>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List matching TCP sockets (read-only; needs no privilege in the current namespace).
    #[command(after_help = EXIT_CODES)]
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Show the owning pid/command of each socket (scans /proc: expensive on busy hosts).
        #[arg(short, long, help_heading = "List options")]
        processes: bool,
    },
    /// Destroy matching TCP sockets, then verify that none remain.
    #[command(after_help = EXIT_CODES)]
    Kill {
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        kill: KillArgs,
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
    /// Print a man page (roff): `sockkill man | man -l -`; `--out DIR` writes one per subcommand.
    Man {
        /// Write sockkill.1 and sockkill-SUBCOMMAND.1 into DIR instead of printing sockkill.1.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
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
#[command(next_help_heading = "Filter")]
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
    /// TCP state as ss names it (established, syn-sent, ..., listening) or one of ss's
    /// groups (all, connected, synchronized, bucket, big); repeatable. Default: every state except listening and time-wait.
    #[arg(long = "state", value_name = "STATE", value_parser = state)]
    pub states: Vec<StateSet>,
    /// TCP sockets (the default; with -u, both).
    #[arg(short = 't', long)]
    pub tcp: bool,
    /// UDP sockets (connected ones are disconnected by a kill; see the README).
    #[arg(short = 'u', long)]
    pub udp: bool,
    /// ss's socket tables: tcp, udp, inet (both); comma-separated; instead of -t/-u.
    #[arg(short = 'A', long = "query", value_name = "TABLES", value_delimiter = ',', value_parser = ["tcp", "udp", "inet", "all"], conflicts_with_all = ["tcp", "udp"])]
    pub query: Vec<String>,
    /// IPv4 only, by local address (including IPv4-mapped IPv6 sockets).
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// IPv6 only, by local address (excluding IPv4-mapped sockets).
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Only sockets held open by this process; repeatable.
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Vec<u32>,
    /// Only sockets created in this cgroup v2 (e.g. a systemd unit's, a container's):
    /// an absolute path, or one relative to the cgroup2 mount. The cgroup itself,
    /// not its children, as the kernel compares; repeatable (OR).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Vec<String>,
    /// Only sockets bound to this interface (name or index, in the target namespace):
    /// SO_BINDTODEVICE, or an IPv6 link-local scope, as ss's `dev`; repeatable (OR).
    #[arg(long, value_name = "IFACE")]
    pub dev: Vec<String>,
    /// Only sockets whose mark (SO_MARK) & MASK == VALUE, decimal or 0x-hex; needs
    /// CAP_NET_ADMIN even to list (the kernel's rule); repeatable (OR).
    #[arg(long, value_name = "VALUE[/MASK]", value_parser = mark)]
    pub mark: Vec<sockkill::filter::Mark>,
    /// Network namespace: NAME under /run/netns, a PATH (contains /), or a PID (its /proc/PID/ns/net).
    #[arg(long, value_name = "NS")]
    pub netns: Option<String>,
    /// ss's filter words, ANDed with the flags: `[state STATE | exclude STATE]...
    /// [EXPRESSION]`, e.g. `dst 10.0.0.7 and not dport = :22`,
    /// `state established '(' dport = :443 or sport > :1024 ')'` (see ss(8) and
    /// the man page's FILTER EXPRESSIONS).
    #[arg(value_name = "FILTER", num_args = 0.., allow_hyphen_values = false)]
    pub words: Vec<String>,
}

/// Options of `sockkill kill` beyond the filter.
#[derive(Debug, Args)]
#[command(next_help_heading = "Kill options")]
pub struct KillArgs {
    /// Show the owning pid/command of each socket (scans /proc).
    #[arg(short, long)]
    pub processes: bool,
    /// Do everything but destroy; exits 1 when something matches (a detector).
    #[arg(long)]
    pub dry_run: bool,
    /// Skip the final dump that checks nothing matches any more.
    #[arg(long)]
    pub no_verify: bool,
    /// Allow a filter that does not narrow the address space (kills everything matching).
    #[arg(long)]
    pub allow_catch_all: bool,
    /// Refuse, destroying nothing, when more sockets than this match (0 = no limit).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX)]
    pub max: usize,
    /// Append JSON lines (start, destroyed, end events) to FILE, synced to disk.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Enforcement window: keep destroying new matching connections until
    /// DURATION after the start (e.g. while a rollout propagates); at most 24h.
    #[arg(long = "for", value_name = "DURATION", value_parser = duration, conflicts_with_all = ["dry_run", "no_verify"])]
    pub window: Option<Duration>,
    /// With --for: how often to dump (one kernel-filtered dump per interval); at least 10ms.
    #[arg(long, value_name = "DURATION", default_value = sockkill::defaults::INTERVAL_ARG, value_parser = duration, requires = "window")]
    pub interval: Duration,
    /// Write a Prometheus node_exporter textfile with the run's counts (atomically).
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

/// Options of `sockkill haproxy`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).multiple(true).args(["server", "addr", "lingering"])))]
#[command(next_help_heading = "HAProxy")]
pub struct HaproxyArgs {
    /// HAProxy's stats socket (runtime API, `level admin`): a unix socket PATH or HOST:PORT.
    #[arg(long, value_name = "PATH|HOST:PORT")]
    pub socket: String,
    /// The server to take out; its address comes from `show servers state`.
    #[arg(long, value_name = "BACKEND/SERVER", value_parser = backend_server)]
    pub server: Option<(String, String)>,
    /// The server's address: alone, it means every server at this address that
    /// the current configuration no longer has there (e.g. removed by a reload).
    #[arg(long, value_name = "IP:PORT", value_parser = server_addr)]
    pub addr: Option<SocketAddr>,
    /// Find what lingers without being told which server: every backend
    /// connection any HAProxy process (old workers too, through the master CLI)
    /// holds whose server HAProxy's tables name and the current configuration
    /// no longer has (gone), or has at another address (moved); servers in
    /// maintenance are reported (maint). With --dry-run: the detector.
    #[arg(long, conflicts_with_all = ["server", "addr", "no_shutdown"])]
    pub lingering: bool,
    /// With --lingering: also end the connections of servers in maintenance.
    #[arg(long, requires = "lingering")]
    pub include_maint: bool,
    /// The master CLI socket (`haproxy -W -S ...`), to ask old workers; found in
    /// the master's command line when not given.
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

    /// How long HAProxy gets to close the sessions itself before anything is
    /// destroyed (at most 1h). Default 2s when commands are sent to HAProxy
    /// (--server); none when nothing is (--addr alone, --no-shutdown,
    /// --lingering: there, how long old workers may still finish by themselves).
    #[arg(long, value_name = "DURATION", value_parser = duration, help_heading = "Timing")]
    pub grace: Option<Duration>,
    /// Clean only once nothing was destroyed, and no matching socket seen, for
    /// this long, every look in between empty (at most 1h).
    #[arg(long, value_name = "DURATION", default_value = sockkill::defaults::SETTLE_ARG, value_parser = duration, help_heading = "Timing")]
    pub settle: Duration,
    /// Give up (exit 1) when sockets still appear after this long; at least
    /// grace + settle, at most 24h. Default 10s, or with --for: the window + settle.
    #[arg(long, value_name = "DURATION", value_parser = duration, help_heading = "Timing")]
    pub deadline: Option<Duration>,
    /// Keep enforcing until DURATION after the start (at most 24h): new
    /// connections to the server are destroyed too; clean is judged at the end.
    #[arg(long = "for", value_name = "DURATION", value_parser = duration, conflicts_with = "dry_run", help_heading = "Timing")]
    pub window: Option<Duration>,
    /// Timeout for connecting to HAProxy and for each answer (at most 1h).
    #[arg(long, value_name = "DURATION", default_value = sockkill::defaults::API_TIMEOUT_ARG, value_parser = duration, help_heading = "Timing")]
    pub api_timeout: Duration,

    /// Refuse, before any command is sent, when more sockets than this are targets (0 = no limit).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX, help_heading = "Safety and records")]
    pub max: usize,
    /// Append JSON lines (start, destroyed, end events) to FILE, synced to disk.
    #[arg(long, value_name = "FILE", help_heading = "Safety and records")]
    pub audit_log: Option<PathBuf>,
    /// Write a Prometheus node_exporter textfile with the run's counts (atomically).
    #[arg(long, value_name = "PATH", help_heading = "Safety and records")]
    pub metrics_file: Option<PathBuf>,
}

fn backend_server(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((b, srv)) if !b.is_empty() && !srv.is_empty() && !srv.contains('/') => {
            Ok((b.to_string(), srv.to_string()))
        }
        _ => Err(format!("expected BACKEND/SERVER, got {s:?}")),
    }
}

fn server_addr(s: &str) -> Result<SocketAddr, String> {
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

/// `1.5s`, `100ms`, `2m`, `1h`, or a bare number of seconds.
///
/// Parsed here rather than with humantime, which takes neither fractions
/// (`1.5s`) nor bare seconds, both common in scripts and in HAProxy's own
/// timeouts. Ranges are checked per option in `plan`.
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("bad duration {s:?}: expected e.g. 1.5s, 100ms, 2m, 1h"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("bad duration {s:?}: must be positive and finite"));
    }
    // Anything past a day is refused per option; saturate instead of overflowing here.
    Duration::try_from_secs_f64((v * scale).min(1e9)).map_err(|_| format!("bad duration {s:?}"))
}

fn cidr(s: &str) -> Result<IpNet, String> {
    parse_cidr(s).map_err(|e| e.to_string())
}
fn port_range(s: &str) -> Result<PortRange, String> {
    s.parse::<PortRange>().map_err(|e| e.to_string())
}
fn mark(s: &str) -> Result<sockkill::filter::Mark, String> {
    s.parse().map_err(|e: sockkill::Error| e.to_string())
}
fn state(s: &str) -> Result<StateSet, String> {
    StateSet::parse_name(s).map_err(|e| e.to_string())
}

/// `values` in order, each once.
fn unique<T: PartialEq + Clone>(values: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(values.len());
    for v in values {
        if !out.contains(v) {
            out.push(v.clone());
        }
    }
    out
}

impl FilterArgs {
    /// The library filter these flags and words describe.
    pub fn to_filter(&self) -> sockkill::Result<Filter> {
        let parsed = sockkill::filter::parse_words(&self.words)?;
        let states = match (parsed.states, self.states.is_empty()) {
            (Some(_), false) => {
                return Err(sockkill::Error::Usage(
                    "give the states either as --state or as ss's `state`/`exclude` words, not both".into(),
                ))
            }
            (Some(words), true) => words,
            (None, true) => StateSet::DEFAULT,
            (None, false) => self.states.iter().fold(StateSet::EMPTY, |acc, s| acc.union(*s)),
        };
        // A value given twice is one condition (the kernel's program has room for a few thousand).
        Ok(Filter {
            dst: unique(&self.dst),
            src: unique(&self.src),
            dport: unique(&self.dport),
            sport: unique(&self.sport),
            states,
            family: match (self.ipv4, self.ipv6) {
                (true, _) => Some(Family::V4),
                (_, true) => Some(Family::V6),
                _ => None,
            },
            pids: self.pid.clone(),
            marks: self.mark.clone(),
            // Resolved against the system (the cgroup2 mount, the target
            // namespace's interfaces) by `plan`.
            cgroups: Vec::new(),
            devs: Vec::new(),
            expression: parsed.expr,
            protocols: match (self.tcp, self.udp, self.query.is_empty()) {
                (false, false, true) => Protocols::TCP,
                (t, u, _) => Protocols {
                    tcp: t || self.query.iter().any(|q| matches!(q.as_str(), "tcp" | "inet" | "all")),
                    udp: u || self.query.iter().any(|q| matches!(q.as_str(), "udp" | "inet" | "all")),
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sockkill::testing::strategies;

    #[test]
    fn parses_durations() {
        assert_eq!(duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(duration("0").unwrap(), Duration::ZERO);
        // Huge values saturate (and are refused per option), never overflow.
        assert!(duration("1e19s").unwrap() >= Duration::from_secs(1_000_000_000));
        for bad in ["", "-1s", "fast", "1d", "NaNs", "infs", "1e400s"] {
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

    #[test]
    fn global_options_come_after_the_commands_own() {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        cmd.build();
        let help = cmd.find_subcommand_mut("kill").unwrap().render_help().to_string();
        let at = |s: &str| help.find(s).unwrap_or_else(|| panic!("{s} not in:\n{help}"));
        assert!(at("--dst") < at("--dport") && at("--dport") < at("--max"), "{help}");
        assert!(at("Filter:") < at("Kill options:") && at("Kill options:") < at("Global options:"), "{help}");
        assert!(at("--max") < at("--json") && at("--dport") < at("--verbose") && at("--max") < at("--help"), "{help}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// A filter printed as flags parses back, through the real command
        /// line, to the same filter (each value once).
        #[test]
        fn filters_round_trip_through_the_command_line(f in strategies::arb_filter_with_pids()) {
            let mut argv = vec!["sockkill".to_string(), "list".to_string()];
            argv.extend(f.to_args());
            let cli = Cli::try_parse_from(&argv).map_err(|e| TestCaseError::fail(format!("{argv:?}: {e}")))?;
            let Command::List { filter, .. } = cli.command else { unreachable!() };
            // A value given twice is one condition.
            let once = Filter { dst: unique(&f.dst), src: unique(&f.src), dport: unique(&f.dport), sport: unique(&f.sport), ..f };
            prop_assert_eq!(filter.to_filter().map_err(|e| TestCaseError::fail(e.to_string()))?, once);
        }

        /// An expression printed as words parses back, through the real
        /// command line, to the same expression.
        #[test]
        fn expressions_round_trip_through_the_command_line(e in strategies::arb_expr()) {
            let text = e.to_string();
            let argv = vec!["sockkill".to_string(), "kill".to_string(), "--dry-run".to_string(), text.clone()];
            let cli = Cli::try_parse_from(&argv).map_err(|err| TestCaseError::fail(format!("{argv:?}: {err}")))?;
            let Command::Kill { filter, .. } = cli.command else { unreachable!() };
            let parsed = filter.to_filter().map_err(|err| TestCaseError::fail(format!("{text}: {err}")))?;
            prop_assert_eq!(parsed.expression.map(|p| p.to_string()), Some(text));
            // The same words as separate arguments, as a shell passes them.
            let mut argv = vec!["sockkill".to_string(), "list".to_string()];
            argv.extend(e.to_string().split(' ').map(str::to_string));
            let cli = Cli::try_parse_from(&argv).map_err(|err| TestCaseError::fail(format!("{argv:?}: {err}")))?;
            let Command::List { filter, .. } = cli.command else { unreachable!() };
            let parsed = filter.to_filter().map_err(|err| TestCaseError::fail(format!("{e}: {err}")))?;
            prop_assert_eq!(parsed.expression.map(|p| p.to_string()), Some(e.to_string()));
        }

        /// Durations print and parse back (to the millisecond).
        #[test]
        fn durations_round_trip(ms in 0u64..100_000_000) {
            prop_assert_eq!(duration(&format!("{ms}ms")).unwrap(), Duration::from_millis(ms));
            prop_assert_eq!(duration(&format!("{}s", ms as f64 / 1000.0)).unwrap().as_millis(), ms as u128);
        }
    }
}
