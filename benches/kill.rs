//! Benchmark: `sockkill kill --dst T` against `ss -K -t dst T`, and `sockkill
//! list` against `ss -tn dst T`, on identically rebuilt connection farms in
//! private network namespaces (never the machine's own).
//!
//! cargo bench --bench kill -- [--runs N] [--cases 1k/0,10k/90k,...] [--markdown FILE]
//!
//! Each case: T target and B background ESTABLISHED loopback connections (two
//! sockets each). Per run and tool: a fresh farm, the tool run once, wall time
//! and peak RSS (wait4), then the kernel's view: target connections left alive
//! and whether every background connection survived. Tools alternate order.

#[path = "../tests/common/farm.rs"]
mod farm;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sockkill::{Engine, Filter, Query, StateSet};

const SOCKKILL: &str = env!("CARGO_BIN_EXE_sockkill");
const TARGET: &str = "127.1.0.1";
const BACKGROUND: &str = "127.2.0.1";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tool {
    Sockkill,
    Ss,
    /// `sockkill kill --no-verify`: shows what the verification dump costs.
    NoVerify,
}

struct Run {
    ms: f64,
    rss_kib: i64,
    left: usize,
    background_ok: bool,
}

/// Runs `program args` under GNU time, returning wall time and peak RSS.
///
/// Not wait4 on our own child: exec keeps the larger of the old and new
/// memory's high-water marks, so a child forked from this (large) process
/// would report our RSS as its own. GNU time is a small process to fork from.
fn timed(program: &str, args: &[&str]) -> (f64, i64) {
    let rss_file = std::env::temp_dir().join(format!("sockkill-bench-rss-{}", std::process::id()));
    let start = Instant::now();
    let status = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(&rss_file)
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run /usr/bin/time (apt-get install time)");
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let rss = std::fs::read_to_string(&rss_file).ok().and_then(|t| t.lines().last()?.trim().parse().ok()).unwrap_or(-1);
    let _ = status;
    (ms, rss)
}

fn count(dst: &str, states: StateSet) -> usize {
    let f = Filter { dst: vec![sockkill::filter::parse_cidr(dst).unwrap()], states, ..Filter::default() };
    Engine::open(None).unwrap().collect(&Query::new(f).unwrap()).unwrap().len()
}

fn assert_private() {
    let me = std::fs::metadata("/proc/thread-self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    let main = std::fs::metadata("/proc/self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    assert_ne!(me, main, "benchmark must not kill in the namespace it started in");
}

/// One kill (and the list timings) on a fresh farm, in a fresh namespace.
fn one(tool: Tool, t: usize, b: usize) -> (Run, [f64; 2]) {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        sockkill::netns::loopback_up().expect("lo");
        assert_private();
        let mut groups = vec![farm::Group::new(TARGET, t)];
        if b > 0 {
            groups.push(farm::Group::new(BACKGROUND, b));
        }
        let f = farm::Farm::build(&groups).expect("farm");
        // list timings (read-only), alternating order
        let mut list = [0.0; 2];
        let list_sk = || timed(SOCKKILL, &["list", "--dst", TARGET]).0;
        let list_ss = || timed("ss", &["-tn", "dst", TARGET]).0;
        if tool == Tool::Sockkill {
            list[0] = list_sk();
            list[1] = list_ss();
        } else {
            list[1] = list_ss();
            list[0] = list_sk();
        }
        assert_private();
        // --max 0: the benchmark's kills exceed the default blast-radius guard on purpose.
        let (ms, rss_kib) = match tool {
            Tool::Sockkill => timed(SOCKKILL, &["kill", "--max", "0", "--dst", TARGET]),
            Tool::NoVerify => timed(SOCKKILL, &["kill", "--max", "0", "--no-verify", "--dst", TARGET]),
            Tool::Ss => timed("ss", &["-K", "-t", "dst", TARGET]),
        };
        let left = count(TARGET, StateSet::parse_name("established").unwrap());
        let background_ok = b == 0 || count(BACKGROUND, StateSet::parse_name("established").unwrap()) == b;
        drop(f);
        (Run { ms, rss_kib, left, background_ok }, list)
    })
    .join()
    .expect("bench thread")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn parse_count(s: &str) -> usize {
    let s = s.trim();
    match s.strip_suffix('k') {
        Some(n) => n.parse::<usize>().expect("count") * 1000,
        None => s.parse().expect("count"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary
    // without it, and a 15-minute timing run is not a test.
    if !args.iter().any(|a| a == "--bench") {
        println!("benchmark skipped (not run by `cargo bench`): cargo bench --bench kill");
        return;
    }
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let runs: usize = arg("--runs").map_or(5, |r| r.parse().expect("--runs"));
    let cases: Vec<(usize, usize)> = arg("--cases")
        .unwrap_or_else(|| "1k/0,10k/90k,50k/50k,100k/100k,1k/199k".into())
        .split(',')
        .map(|c| {
            let (t, b) = c.split_once('/').expect("T/B");
            (parse_count(t), parse_count(b))
        })
        .collect();
    let ss_version =
        Command::new("ss").arg("-V").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    println!("# sockkill kill vs ss -K: {runs} runs per tool and case; {}", ss_version.unwrap_or_default());

    let mut table = String::from(
        "| case (targets/background connections) | `ss -K -t dst` ms | `sockkill kill` ms | speed-up | `--no-verify` ms (speed-up) | ss peak RSS | sockkill peak RSS | targets left alive: ss / sockkill (per run) | background intact | `ss -tn dst` ms | `sockkill list` ms | list speed-up |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for &(t, b) in &cases {
        let mut res: [Vec<Run>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        let mut lists: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for r in 0..runs {
            let order = if r % 2 == 0 {
                [Tool::Sockkill, Tool::Ss, Tool::NoVerify]
            } else {
                [Tool::Ss, Tool::NoVerify, Tool::Sockkill]
            };
            for tool in order {
                let (run, list) = one(tool, t, b);
                eprintln!(
                    "case {t}/{b} run {r} {tool:?}: {:.1} ms, rss {} KiB, left {}, background ok {}",
                    run.ms, run.rss_kib, run.left, run.background_ok
                );
                if tool != Tool::NoVerify {
                    lists[0].push(list[0]);
                    lists[1].push(list[1]);
                }
                res[tool as usize].push(run);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let med = |v: &[Run]| median(&mut v.iter().map(|r| r.ms).collect::<Vec<_>>());
        let rss = |v: &[Run]| v.iter().map(|r| r.rss_kib).max().unwrap_or(0) as f64 / 1024.0;
        let left = |v: &[Run]| v.iter().map(|r| r.left.to_string()).collect::<Vec<_>>().join(",");
        let (sk, ss, nv) = (&res[0], &res[1], &res[2]);
        let bg = sk.iter().chain(ss.iter()).chain(nv.iter()).all(|r| r.background_ok);
        let (lsk, lss) = (median(&mut lists[0]), median(&mut lists[1]));
        let row = format!(
            "| {}/{} | {:.1} | {:.1} | {:.2}x | {:.1} ({:.2}x) | {:.1} MiB | {:.1} MiB | {} / {} | {} | {:.1} | {:.1} | {:.2}x |\n",
            t,
            b,
            med(ss),
            med(sk),
            med(ss) / med(sk),
            med(nv),
            med(ss) / med(nv),
            rss(ss),
            rss(sk),
            left(ss),
            left(sk),
            if bg { "yes" } else { "NO" },
            lss,
            lsk,
            lss / lsk
        );
        print!("{row}");
        table += &row;
    }
    println!("\n{table}");
    if let Some(path) = arg("--markdown") {
        std::fs::write(path, table).expect("write markdown");
    }
}
