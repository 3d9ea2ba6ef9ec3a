//! Benchmark: one lingering sweep (`sockkill haproxy --lingering`) after a
//! reload, with N sessions across the old and the current worker.
//!
//! cargo bench --bench haproxy_lingering -- [--sessions 10000] [--runs 3]
//!
//! In a private network namespace: a real master-worker HAProxy
//! (`$SOCKKILL_HAPROXY`, default `haproxy`) balancing over four servers
//! s1-s4 that accept and hold. N/2 clients connect, a reload removes s3 and
//! s4 (the old worker keeps its N/2 sessions, half of them to s3/s4), and
//! N/2 more clients connect to the new worker (s1, s2). A prober sends a
//! line every millisecond through another frontend to an echo server and
//! times each answer. Measured per run: the detector (`--dry-run`) and the
//! sweep's wall time, the bytes HAProxy's CLI answered (`tables_read`), what
//! was destroyed, and the prober's p50/p99 during the sweep against the same
//! prober without one. Timings belong here, never in a pass/fail test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const SERVERS: [&str; 4] = ["127.0.0.11:9001", "127.0.0.12:9002", "127.0.0.13:9003", "127.0.0.14:9004"];
const ECHO: &str = "127.0.0.15:9005";
/// Per worker: a client and a server fd per session within the hard RLIMIT_NOFILE (20000 here).
const MAXCONN: usize = 9000;

/// Accepts and holds every connection, with a long accept queue.
fn hold(addr: &str) -> mpsc::Receiver<TcpStream> {
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};
    let a: std::net::SocketAddrV4 = addr.parse().expect("IPv4 address");
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(a)).expect("bind");
    listen(&fd, Backlog::MAXALLOWABLE).expect("listen");
    let l = TcpListener::from(fd);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            if tx.send(s).is_err() {
                break;
            }
        }
    });
    rx
}

/// Answers each byte with itself.
fn echo(addr: &str) {
    let l = TcpListener::bind(addr).expect("bind echo");
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut b = [0u8; 64];
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// HAProxy's master, ended by pid (its workers follow it).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would leave them behind).
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

fn config(dir: &std::path::Path, servers: &[&str], maxconn: usize) -> String {
    let mut cfg = format!(
        "global\n    maxconn {maxconn}\n    stats socket {d}/admin.sock level admin\n\
         defaults\n    mode tcp\n    timeout connect 30s\n    timeout client 1h\n    timeout server 1h\n\
         frontend fe\n    bind 127.0.0.10:8000\n    default_backend be\n\
         backend be\n    balance roundrobin\n",
        d = dir.display()
    );
    for (i, s) in servers.iter().enumerate() {
        cfg += &format!("    server s{} {s}\n", i + 1);
    }
    cfg + &format!(
        "frontend probe\n    bind 127.0.0.10:8001\n    default_backend probe\nbackend probe\n    server p1 {ECHO}\n"
    )
}

fn ask(dir: &std::path::Path, cmd: &str) -> String {
    // Not there yet (HAProxy starting, reloading): no answer.
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(dir.join("admin.sock")) else { return String::new() };
    if writeln!(s, "{cmd}").is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn worker_pid(dir: &std::path::Path) -> Option<u32> {
    ask(dir, "show info").lines().find_map(|l| l.strip_prefix("Pid: ")).and_then(|p| p.trim().parse().ok())
}

/// HAProxy's established connections to s1-s4, from the kernel.
fn to_servers() -> usize {
    let filter = sockkill::Filter {
        dport: vec!["9001-9004".parse().expect("range")],
        states: sockkill::StateSet::parse_name("established").expect("state"),
        ..sockkill::Filter::default()
    };
    sockkill::list(None, filter, false).map_or(0, |v| v.len())
}

/// Connects `n` more clients to the frontend and waits until HAProxy holds a
/// connection to a server for each.
fn connect(n: usize, keep: &mut Vec<TcpStream>) {
    let before = to_servers();
    for _ in 0..n {
        keep.push(TcpStream::connect("127.0.0.10:8000").expect("connect to HAProxy"));
    }
    let end = Instant::now() + Duration::from_secs(60);
    while to_servers() < before + n {
        assert!(Instant::now() < end, "HAProxy holds {} of {} server connections", to_servers(), before + n);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The servers (s1-s4 hold, the echo server answers) in a process of their
/// own: the hard RLIMIT_NOFILE (20000 here) cannot hold both ends of 10k
/// connections in one. Runs until its stdin closes.
fn serve() {
    let held: Vec<_> = SERVERS.iter().map(|s| hold(s)).collect();
    std::thread::spawn(move || {
        let mut keep = Vec::new();
        loop {
            for rx in &held {
                while let Ok(s) = rx.try_recv() {
                    keep.push(s);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    echo(ECHO);
    let _ = std::io::stdin().read(&mut [0u8; 1]);
}

/// Probes until `stop`: one line through HAProxy to the echo server every ms; RTTs in µs.
fn probe(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut s = TcpStream::connect("127.0.0.10:8001").expect("probe connect");
        s.set_nodelay(true).ok();
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut rtts = Vec::new();
        let mut line = String::new();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            if s.write_all(b"x\n").is_err() {
                break;
            }
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            rtts.push(t.elapsed().as_micros() as u64);
            std::thread::sleep(Duration::from_millis(1));
        }
        rtts
    })
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    v.sort_unstable();
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

/// Runs the sockkill binary; (wall ms, JSON report).
fn sockkill(dir: &std::path::Path, extra: &[&str]) -> (f64, serde_json::Value) {
    let sock = dir.join("admin.sock");
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sockkill"))
        .args(["haproxy", "--json", "--lingering", "--socket"])
        .arg(&sock)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run sockkill");
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    (ms, serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null))
}

fn bytes_read(doc: &serde_json::Value) -> u64 {
    doc["tables_read"]["reads"].as_array().map_or(0, |r| r.iter().filter_map(|x| x["bytes"].as_u64()).sum())
}

/// The prober's (p50, p99) in ms over `d`, or while `during` runs.
fn probed<T>(during: impl FnOnce() -> T) -> (T, f64, f64, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let h = probe(stop.clone());
    std::thread::sleep(Duration::from_millis(100));
    let out = during();
    stop.store(true, Ordering::Relaxed);
    let mut rtts = h.join().expect("prober");
    let n = rtts.len();
    (out, pct(&mut rtts, 0.5), pct(&mut rtts, 0.99), n)
}

fn one_run(sessions: usize, run: usize) -> String {
    let dir = std::env::temp_dir().join(format!("sockkill-lingering-bench-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let _ = std::fs::write("/proc/sys/net/core/somaxconn", "65535");
    let servers = Command::new(std::env::current_exe().expect("own path"))
        .arg("--serve")
        .stdin(Stdio::piped())
        .spawn()
        .expect("start the servers");
    let _servers = Running(servers);
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(ECHO).is_err() {
        assert!(Instant::now() < end, "the servers did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(dir.join("haproxy.cfg"), config(&dir, &SERVERS, MAXCONN)).expect("config");
    let bin = std::env::var("SOCKKILL_HAPROXY").unwrap_or_else(|_| "haproxy".into());
    let log = std::fs::File::create(dir.join("haproxy.log")).expect("log");
    let child = Command::new(bin)
        .args(["-W", "-db", "-S"])
        .arg(dir.join("master.sock"))
        .arg("-f")
        .arg(dir.join("haproxy.cfg"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start haproxy");
    let master = child.id();
    let _running = Running(child);
    let end = Instant::now() + Duration::from_secs(10);
    while worker_pid(&dir).is_none() {
        assert!(Instant::now() < end, "HAProxy did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The master's signal handlers are set once its CLI answers.
    std::thread::sleep(Duration::from_millis(500));
    let mut keep = Vec::with_capacity(sessions * 2 + 16);
    connect(sessions / 2, &mut keep);
    let old = worker_pid(&dir);
    std::fs::write(dir.join("haproxy.cfg"), config(&dir, &SERVERS[..2], MAXCONN)).expect("config");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(master as i32), nix::sys::signal::Signal::SIGUSR2)
        .expect("SIGUSR2");
    let end = Instant::now() + Duration::from_secs(20);
    while worker_pid(&dir) == old {
        assert!(Instant::now() < end, "no new worker after the reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    connect(sessions - sessions / 2, &mut keep);

    let (_, base50, base99, base_n) = probed(|| std::thread::sleep(Duration::from_secs(3)));
    let (dry_ms, dry) = sockkill(&dir, &["--dry-run"]);
    let ((ms, doc), p50, p99, n) = probed(|| sockkill(&dir, &[]));
    let lingering: Vec<String> = doc["lingering"]
        .as_array()
        .map(|a| a.iter().map(|l| format!("{} {} x{}", l["class"], l["server"], l["sockets"])).collect())
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    format!(
        "{sessions} sessions ({} in the old worker, half of them to the 2 removed servers): \
         detector (--dry-run) {dry_ms:.0} ms, {} bytes read from HAProxy; \
         sweep {ms:.0} ms, destroyed {}, verdict {}, {} bytes read from HAProxy; found {lingering:?}; \
         prober p50/p99 {p50:.2}/{p99:.2} ms during the sweep (n {n}) vs {base50:.2}/{base99:.2} ms without (n {base_n})",
        sessions / 2,
        bytes_read(&dry),
        doc["summary"]["destroyed"],
        doc["verdict"],
        bytes_read(&doc),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let sessions: usize = arg("--sessions").map_or(10_000, |p| p.parse().expect("--sessions"));
    let runs: usize = arg("--runs").map_or(3, |p| p.parse().expect("--runs"));
    if args.iter().any(|a| a == "--serve") {
        return serve();
    }
    // The clients live in this process (the servers in a child): up to the hard limit.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).expect("getrlimit");
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    assert!(sessions as u64 + 1000 < hard, "{sessions} clients need more than RLIMIT_NOFILE {hard}");
    for run in 0..runs {
        let line = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            sockkill::netns::loopback_up().expect("lo");
            assert_ne!(
                std::fs::read_link("/proc/thread-self/ns/net").ok(),
                std::fs::read_link("/proc/1/ns/net").ok(),
                "the benchmark must not run in the machine's own network namespace"
            );
            one_run(sessions, run)
        })
        .join()
        .expect("bench thread");
        println!("{line}");
        let _ = std::io::stdout().flush();
    }
}
