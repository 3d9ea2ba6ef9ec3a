//! Benchmark: `sockkill kill --dst T` against `ss -K -t dst T`, and `sockkill
//! list` against `ss -tn dst T`, on identically rebuilt connection farms in
//! private network namespaces (never the machine's own).
//!
//! cargo bench --bench kill -- [--runs N] [--cases 1k/199k,10k/90k:v6,...] [--markdown FILE] [--log FILE]
//!
//! A case is T target and B background ESTABLISHED loopback connections (two
//! sockets each), with optional modifiers: `:port` (both tools also filter on
//! the targets' port, as the HAProxy mode always does), `:v6` (a v6 listener
//! and 1000 IPv6 connections in the namespace, so no family walk can be
//! skipped), `:1cpu` (both tools pinned to core 0 with taskset); they combine
//! (`1k/199k:v6:1cpu`: an IPv6 socket present, one CPU); `:expr` (both tools
//! take ss's words `dst T and not dport = :22`, where the others say `dst T`);
//! `:udp` (connected UDP sockets instead of TCP connections: `-u` for both).
//! Per run and
//! tool: a fresh farm, the tool run once, wall time and peak RSS (through GNU
//! time), then the kernel's view: target connections left alive and whether
//! every background connection survived. Tools alternate order per run. Before
//! each timing the bench waits until the machine is quiet: the kernel frees a
//! dropped farm's sockets in the background, and a tool timed meanwhile would
//! share the CPUs with that work.

use sockkill::testing::farm;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sockkill::filter::Protocols;
use sockkill::{Filter, StateSet};

const SOCKKILL: &str = env!("CARGO_BIN_EXE_sockkill");
const TARGET: &str = "127.1.0.1";
const BACKGROUND: &str = "127.2.0.1";
const V6: &str = "::1";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tool {
    Sockkill,
    Ss,
    /// `sockkill kill --no-verify`: shows what the verification dump costs.
    NoVerify,
}

#[derive(Clone, Debug)]
struct Case {
    targets: usize,
    background: usize,
    port: bool,
    v6: bool,
    one_cpu: bool,
    expr: bool,
    udp: bool,
}

impl Case {
    fn name(&self) -> String {
        let mut n = format!("{}/{}", self.targets, self.background);
        for (on, m) in
            [(self.port, ":port"), (self.v6, ":v6"), (self.one_cpu, ":1cpu"), (self.expr, ":expr"), (self.udp, ":udp")]
        {
            if on {
                n += m;
            }
        }
        n
    }
}

struct Run {
    ms: f64,
    rss_kib: i64,
    left: usize,
    background_ok: bool,
}

/// Runs `program args` under GNU time (and taskset when pinned), returning
/// wall time and peak RSS.
///
/// Not wait4 on our own child: exec keeps the larger of the old and new
/// memory's high-water marks, so a child forked from this (large) process
/// would report our RSS as its own. GNU time is a small process to fork from.
fn timed(program: &str, args: &[&str], one_cpu: bool) -> (f64, i64) {
    let rss_file = std::env::temp_dir().join(format!("sockkill-bench-rss-{}", std::process::id()));
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "%M", "-o"]).arg(&rss_file);
    if one_cpu {
        cmd.args(["taskset", "-c", "0"]);
    }
    let start = Instant::now();
    let _ = cmd
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run /usr/bin/time (apt-get install time)");
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let rss = std::fs::read_to_string(&rss_file).ok().and_then(|t| t.lines().last()?.trim().parse().ok()).unwrap_or(-1);
    (ms, rss)
}

/// Idle and total jiffies of all CPUs (/proc/stat's `cpu` line).
fn cpu_times() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (idle, fields.iter().sum())
}

/// Waits (up to 10 s) until the machine is quiet: a freed farm's sockets are
/// reclaimed by kernel workers after the fact, and a tool timed meanwhile
/// shares the CPUs with them. Two 100 ms windows in a row at least 90% idle.
fn wait_quiet() {
    let end = Instant::now() + Duration::from_secs(10);
    let mut quiet = 0;
    while quiet < 2 && Instant::now() < end {
        let (i0, t0) = cpu_times();
        std::thread::sleep(Duration::from_millis(100));
        let (i1, t1) = cpu_times();
        let idle = (i1 - i0) as f64 / (t1 - t0).max(1) as f64;
        quiet = if idle >= 0.9 { quiet + 1 } else { 0 };
    }
}

fn count(dst: &str, udp: bool) -> usize {
    let f = Filter {
        dst: vec![sockkill::filter::parse_cidr(dst).unwrap()],
        states: StateSet::parse_name("established").unwrap(),
        protocols: Protocols { tcp: !udp, udp },
        ..Filter::default()
    };
    sockkill::list(None, f, false).unwrap().len()
}

fn assert_private() {
    let me = std::fs::metadata("/proc/thread-self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    let main = std::fs::metadata("/proc/self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    assert_ne!(me, main, "benchmark must not kill in the namespace it started in");
}

/// One kill (and the list timings) on a fresh farm, in a fresh namespace.
fn one(tool: Tool, case: &Case) -> (Run, [f64; 2]) {
    let case = case.clone();
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        sockkill::netns::loopback_up().expect("lo");
        assert_private();
        let mut groups = vec![farm::Group::new(TARGET, case.targets)];
        if case.background > 0 {
            groups.push(farm::Group::new(BACKGROUND, case.background));
        }
        if case.v6 {
            groups.push(farm::Group::new(V6, 1000));
        }
        let f = if case.udp { farm::Farm::build_udp(&groups) } else { farm::Farm::build(&groups) }.expect("farm");
        let port = f.ports[0][0].to_string();
        let mut sk_filter = vec!["--dst", TARGET];
        let mut ss_filter = vec!["dst", TARGET];
        if case.expr {
            // ss's words for both: the expression goes into the kernel's bytecode.
            sk_filter = vec!["dst", TARGET, "and", "not", "dport", "=", ":22"];
            ss_filter = sk_filter.clone();
        }
        let table = if case.udp { "-u" } else { "-t" };
        sk_filter.insert(0, table);
        let ss_port = format!(":{port}");
        if case.port {
            sk_filter.extend(["--dport", port.as_str()]);
            ss_filter.extend(["dport", "=", ss_port.as_str()]);
        }
        wait_quiet();
        // list timings (read-only), alternating order
        let mut list = [0.0; 2];
        let list_sk = || timed(SOCKKILL, &[&["list"][..], &sk_filter].concat(), case.one_cpu).0;
        let list_ss = || timed("ss", &[&[table, "-n"][..], &ss_filter].concat(), case.one_cpu).0;
        if tool == Tool::Sockkill {
            list[0] = list_sk();
            list[1] = list_ss();
        } else {
            list[1] = list_ss();
            list[0] = list_sk();
        }
        assert_private();
        // --max at the target count: the blast-radius guard's cost is in the figure.
        let max = case.targets.to_string();
        let kill = [&["kill", "-q", "--max", max.as_str()][..], &sk_filter].concat();
        wait_quiet();
        let (ms, rss_kib) = match tool {
            Tool::Sockkill => timed(SOCKKILL, &kill, case.one_cpu),
            Tool::NoVerify => timed(SOCKKILL, &[&kill[..], &["--no-verify"]].concat(), case.one_cpu),
            Tool::Ss => timed("ss", &[&["-K", table][..], &ss_filter].concat(), case.one_cpu),
        };
        let left = count(TARGET, case.udp);
        let background_ok = case.background == 0 || count(BACKGROUND, case.udp) == case.background;
        drop(f);
        (Run { ms, rss_kib, left, background_ok }, list)
    })
    .join()
    .expect("bench thread")
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `median (min-max)`.
fn spread(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    format!("{:.1} ({:.0}-{:.0})", median(v), min, max)
}

fn parse_case(s: &str) -> Case {
    let mut parts = s.trim().split(':');
    let (t, b) = parts.next().and_then(|tb| tb.split_once('/')).expect("T/B");
    let n = |s: &str| match s.strip_suffix('k') {
        Some(k) => k.parse::<usize>().expect("count") * 1000,
        None => s.parse().expect("count"),
    };
    let mut c =
        Case { targets: n(t), background: n(b), port: false, v6: false, one_cpu: false, expr: false, udp: false };
    for m in parts {
        match m {
            "port" => c.port = true,
            "v6" => c.v6 = true,
            "1cpu" => c.one_cpu = true,
            "expr" => c.expr = true,
            "udp" => c.udp = true,
            other => panic!("unknown case modifier {other}"),
        }
    }
    c
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary
    // without it, and a long timing run is not a test.
    if !args.iter().any(|a| a == "--bench") {
        println!("benchmark skipped (not run by `cargo bench`): cargo bench --bench kill");
        return;
    }
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let runs: usize = arg("--runs").map_or(5, |r| r.parse().expect("--runs"));
    let cases: Vec<Case> = arg("--cases")
        .unwrap_or_else(|| {
            "1k/199k,1k/199k:v6:1cpu,1k/199k:port,10k/90k,10k/90k:v6,10k/90k:1cpu,50k/50k,100k/100k".into()
        })
        .split(',')
        .map(parse_case)
        .collect();
    let ss_version =
        Command::new("ss").arg("-V").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut log = arg("--log").map(|p| std::fs::File::create(p).expect("--log file"));
    let header = format!(
        "# sockkill kill vs ss -K: {runs} runs per tool and case; {}; kernel {}",
        ss_version.unwrap_or_default(),
        kernel.trim()
    );
    println!("{header}");
    if let Some(l) = log.as_mut() {
        let _ = writeln!(l, "{header}");
    }

    let mut table = String::from(
        "| case (targets/background) | `ss -K` ms | `sockkill kill` ms | speed-up | `--no-verify` ms | speed-up | ss peak RSS | sockkill peak RSS | targets left alive (ss / sockkill, all runs) | background intact | `ss -tn` ms | `sockkill list` ms | list speed-up |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for case in &cases {
        let mut res: [Vec<Run>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        let mut lists: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for r in 0..runs {
            let order = if r % 2 == 0 {
                [Tool::Sockkill, Tool::Ss, Tool::NoVerify]
            } else {
                [Tool::Ss, Tool::NoVerify, Tool::Sockkill]
            };
            for tool in order {
                let (run, list) = one(tool, case);
                let line = format!(
                    "case {} run {r} {tool:?}: {:.1} ms, rss {} KiB, left {}, background ok {}, list sockkill {:.1} ms, ss {:.1} ms",
                    case.name(),
                    run.ms,
                    run.rss_kib,
                    run.left,
                    run.background_ok,
                    list[0],
                    list[1]
                );
                eprintln!("{line}");
                if let Some(l) = log.as_mut() {
                    let _ = writeln!(l, "{line}");
                }
                if tool != Tool::NoVerify {
                    lists[0].push(list[0]);
                    lists[1].push(list[1]);
                }
                res[tool as usize].push(run);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let ms = |v: &[Run]| v.iter().map(|r| r.ms).collect::<Vec<_>>();
        let rss = |v: &[Run]| v.iter().map(|r| r.rss_kib).max().unwrap_or(0) as f64 / 1024.0;
        let left = |v: &[Run]| v.iter().map(|r| r.left).sum::<usize>();
        let (sk, ss, nv) = (&res[0], &res[1], &res[2]);
        let bg = sk.iter().chain(ss.iter()).chain(nv.iter()).all(|r| r.background_ok);
        let row = format!(
            "| {} | {} | {} | {:.2}x | {} | {:.2}x | {:.1} MiB | {:.1} MiB | {} / {} | {} | {} | {} | {:.2}x |\n",
            case.name(),
            spread(&ms(ss)),
            spread(&ms(sk)),
            median(&ms(ss)) / median(&ms(sk)),
            spread(&ms(nv)),
            median(&ms(ss)) / median(&ms(nv)),
            rss(ss),
            rss(sk).max(rss(nv)),
            left(ss),
            left(sk),
            if bg { "yes" } else { "NO" },
            spread(&lists[1]),
            spread(&lists[0]),
            median(&lists[1]) / median(&lists[0])
        );
        print!("{row}");
        table += &row;
    }
    println!("\n{table}");
    if let Some(path) = arg("--markdown") {
        std::fs::write(path, table).expect("write markdown");
    }
}
