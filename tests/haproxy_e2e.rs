//! `sockkill haproxy` against a real HAProxy, in private network namespaces.
//!
//! The HAProxy binary is `$SOCKKILL_HAPROXY` (default `haproxy`, Debian's
//! 2.6 installed by scripts/install-deps.sh); scripts/haproxy-matrix.sh runs
//! this suite against upstream 2.4, 2.8, 3.0, 3.1 and 3.2 too, and each
//! scenario appends what happened to `$SOCKKILL_MATRIX_LOG` when set.
//!
//! Lab: clients -> HAProxy frontends on 127.0.0.10 -> backends whose servers
//! answer every line with their name (so each client knows where it landed),
//! TCP mode, long timeouts. Each test says whether it gives `--master-socket`.
//! Tests run one at a time (a shared lock): HAProxy's timing is what they
//! observe, and two cores are not many.

#[macro_use]
mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use sockkill::filter::parse_cidr;
use sockkill::haproxy::api::{Api, Endpoint};
use sockkill::haproxy::parse;
use sockkill::{Filter, PortRange, StateSet, TcpSocket};

static SERIAL: Mutex<()> = Mutex::new(());

const S1: &str = "127.0.0.11:9001";
const S2: &str = "127.0.0.12:9002";

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn haproxy_bin() -> String {
    std::env::var("SOCKKILL_HAPROXY").unwrap_or_else(|_| "haproxy".into())
}

/// The HAProxy version under test, e.g. (2, 6).
fn version() -> (u32, u32) {
    let out = Command::new(haproxy_bin()).arg("-v").output().expect("run haproxy -v");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = text.split_whitespace().nth(2).unwrap_or("0.0");
    let mut it = v.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse().ok());
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Appends what a scenario did to `$SOCKKILL_MATRIX_LOG` (for docs/haproxy-matrix.md).
fn record(scenario: &str, master_socket: bool, doc: &Value, code: i32) {
    let Ok(path) = std::env::var("SOCKKILL_MATRIX_LOG") else { return };
    let n = |k: &str| doc["summary"][k].as_u64().unwrap_or(0);
    let line = serde_json::json!({
        "haproxy": doc["haproxy_version"],
        "scenario": scenario,
        "master_socket": master_socket,
        "exit_code": code,
        "initial": n("initial"),
        "closed_by_haproxy": n("closed_by_haproxy"),
        "destroyed": n("destroyed"),
        "other_server": n("other_server"),
        "ambiguous": n("ambiguous"),
        "remaining": n("remaining"),
        "workers_exited": doc["workers_exited"].as_array().map_or(0, |a| a.len()),
        "wait_answer": doc["wait_answer"],
    });
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}

/// A backend server that answers each line with its name.
fn tag_server(bind: &str, tag: &'static str) -> TcpListener {
    let l = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
    let listener = l.try_clone().unwrap();
    std::thread::spawn(move || {
        while let Ok((s, _)) = listener.accept() {
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                for line in BufReader::new(s).lines() {
                    if line.is_err() || writeln!(w, "{tag}").is_err() {
                        break;
                    }
                }
            });
        }
    });
    l
}

/// A client through HAProxy, and the server it landed on.
struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    server: String,
}

impl Client {
    fn connect(front: &str) -> Client {
        let stream = TcpStream::connect(front).expect("connect to HAProxy");
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut c = Client { stream, reader, server: String::new() };
        c.server = c.ask().expect("first answer through HAProxy");
        c
    }

    fn ask(&mut self) -> std::io::Result<String> {
        writeln!(self.stream, "who")?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
        }
        Ok(line.trim().to_string())
    }

    /// True once HAProxy ended this client's connection (EOF or reset).
    fn ended(&mut self) -> bool {
        self.stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut line = String::new();
        let r = self.reader.read_line(&mut line);
        self.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        match r {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        }
    }
}

/// Whether `pid` has a handler for signal `sig` (SigCgt in /proc/PID/status).
fn catches(pid: u32, sig: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("SigCgt:")).map(|h| h.trim().to_string()))
        .and_then(|h| u64::from_str_radix(&h, 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

/// A backend: its frontend's port on 127.0.0.10, and its servers.
struct Backend {
    name: &'static str,
    port: u16,
    servers: Vec<(&'static str, &'static str)>,
}

fn be(name: &'static str, port: u16, servers: &[(&'static str, &'static str)]) -> Backend {
    Backend { name, port, servers: servers.to_vec() }
}

fn config(dir: &Path, backends: &[Backend]) -> String {
    let mut cfg = format!(
        "global\n    stats socket {d}/admin.sock level admin\n    stats socket {d}/user.sock level user\n\
         defaults\n    mode tcp\n    timeout connect 30s\n    timeout client 1h\n    timeout server 1h\n    retries 3\n",
        d = dir.display()
    );
    for b in backends {
        cfg += &format!("frontend fe_{n}\n    bind 127.0.0.10:{p}\n    default_backend {n}\n", n = b.name, p = b.port);
        cfg += &format!("backend {}\n    balance roundrobin\n", b.name);
        for (s, addr) in &b.servers {
            cfg += &format!("    server {s} {addr}\n");
        }
    }
    cfg
}

/// One HAProxy instance (master-worker or a single process); ended by pid on drop.
struct Haproxy {
    dir: PathBuf,
    child: Child,
    master_worker: bool,
    /// Started with a master CLI (`-S`).
    master_cli: bool,
    /// The command HAProxy was started through, if any.
    wrapped: Vec<String>,
}

fn scratch_dir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sockkill-hx-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

impl Haproxy {
    /// Starts HAProxy with `backends`, through `wrap` (e.g. `unshare ...`) when given;
    /// in master-worker mode with a master CLI unless `master_cli` is false.
    fn start_with(master_worker: bool, master_cli: bool, backends: &[Backend], wrap: &[&str]) -> Haproxy {
        let dir = scratch_dir();
        fs::write(dir.join("haproxy.cfg"), config(&dir, backends)).unwrap();
        let log = fs::File::create(dir.join("haproxy.log")).unwrap();
        let mut cmd = Command::new(wrap.first().copied().unwrap_or(haproxy_bin().as_str()));
        if !wrap.is_empty() {
            cmd.args(&wrap[1..]).arg(haproxy_bin());
        }
        cmd.arg("-db");
        let master_cli = master_worker && master_cli;
        if master_worker {
            cmd.arg("-W");
        }
        if master_cli {
            cmd.arg("-S").arg(dir.join("master.sock"));
        }
        cmd.arg("-f").arg(dir.join("haproxy.cfg"));
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().expect("start haproxy");
        let h =
            Haproxy { dir, child, master_worker, master_cli, wrapped: wrap.iter().map(|s| s.to_string()).collect() };
        let admin = Endpoint::parse(&h.sock("admin.sock"));
        wait_until(Duration::from_secs(10), "HAProxy to answer", || {
            Api::new(admin.clone(), Duration::from_secs(2), None).is_ok_and(|a| a.command("show info").is_ok())
        });
        if master_worker {
            // A reload is SIGUSR2 to the master: sent before its handler is in
            // place, it is lost (or fatal). Wait until the master catches it.
            let master = h.master_pid();
            wait_until(Duration::from_secs(10), "the master's SIGUSR2 handler", || catches(master, libc::SIGUSR2));
        }
        if master_cli {
            // The master serves its CLI from its event loop, after its signal
            // handlers are in place: only then may a test send it SIGUSR2.
            let master = Endpoint::parse(&h.sock("master.sock"));
            wait_until(Duration::from_secs(10), "the master CLI", || {
                Api::new(master.clone(), Duration::from_secs(2), None)
                    .is_ok_and(|a| a.command("show proc").is_ok_and(|t| t.contains("worker")))
            });
        }
        h
    }

    fn start(master_worker: bool, backends: &[Backend]) -> Haproxy {
        Haproxy::start_with(master_worker, true, backends, &[])
    }

    fn sock(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn api(&self) -> Api {
        Api::new(Endpoint::parse(&self.sock("admin.sock")), Duration::from_secs(2), None).unwrap()
    }

    /// The master's `show proc`, or None while its CLI does not answer.
    fn master_procs(&self) -> Option<Vec<parse::ProcEntry>> {
        let api = Api::new(Endpoint::parse(&self.sock("master.sock")), Duration::from_secs(2), None).ok()?;
        parse::parse_proc(&api.command("show proc").ok()?).ok()
    }

    /// HAProxy's own pid of the current worker (what `show info` prints).
    fn worker_pid(&self) -> u32 {
        parse::parse_info(&self.api().command("show info").unwrap()).unwrap().pid
    }

    /// The master's pid here: our child, or its haproxy child when started through a wrapper.
    fn master_pid(&self) -> u32 {
        let child = self.child.id();
        if sockkill::procfs::command(child) == "haproxy" {
            return child;
        }
        let mut found = None;
        wait_until(Duration::from_secs(5), "the wrapped HAProxy master", || {
            found = sockkill::procfs::all_pids().into_iter().find(|&p| {
                sockkill::procfs::parent_pid(p).ok() == Some(child) && sockkill::procfs::command(p) == "haproxy"
            });
            found.is_some()
        });
        found.unwrap()
    }

    /// Every HAProxy process of this instance (our pids).
    fn pids(&self) -> Vec<u32> {
        let master = self.master_pid();
        let mut pids = vec![master];
        pids.extend(sockkill::procfs::all_pids().into_iter().filter(|&p| {
            sockkill::procfs::parent_pid(p).ok() == Some(master) && sockkill::procfs::command(p) == "haproxy"
        }));
        pids
    }

    /// Reloads with `backends` and waits for the new worker. Returns (old, new) as HAProxy numbers them.
    fn reload(&self, backends: &[Backend]) -> (u32, u32) {
        assert!(self.master_worker);
        let old = self.worker_pid();
        fs::write(self.dir.join("haproxy.cfg"), config(&self.dir, backends)).unwrap();
        kill(Pid::from_raw(self.master_pid() as i32), Signal::SIGUSR2).unwrap();
        let mut new = old;
        let end = Instant::now() + Duration::from_secs(10);
        while new == old {
            assert!(Instant::now() < end, "no new worker 10 s after SIGUSR2; HAProxy's log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
            new = self.api().command("show info").ok().and_then(|t| parse::parse_info(&t).ok()).map_or(old, |i| i.pid);
        }
        if self.master_cli {
            // The master re-executes itself on a reload and listens on its CLI
            // again from its event loop, which can come after the new worker answers.
            let mut procs = Vec::new();
            wait_until(Duration::from_secs(10), "the master CLI after the reload", || {
                procs = self.master_procs().unwrap_or_default();
                !procs.is_empty()
            });
            assert!(procs.iter().any(|p| p.pid == old && p.old), "old worker draining: {procs:?}");
        } else {
            assert!(sockkill::procfs::Process::open(self.host_pid(old)).is_ok_and(|p| p.alive()), "old worker gone");
        }
        (old, new)
    }

    /// Our pid for HAProxy's pid `inner` (they differ when HAProxy has its own pid namespace).
    fn host_pid(&self, inner: u32) -> u32 {
        self.pids()
            .into_iter()
            .find(|&p| sockkill::procfs::nspid(p).and_then(|v| v.last().copied()) == Some(inner))
            .unwrap_or(inner)
    }

    fn server_state(&self, backend: &str, server: &str) -> (u32, u32) {
        let text = self.api().command("show servers state").unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let header: Vec<&str> = lines[1].trim_start_matches('#').split_whitespace().collect();
        let col = |n: &str| header.iter().position(|h| *h == n).unwrap();
        for l in &lines[2..] {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(col("be_name")) == Some(&backend) && f.get(col("srv_name")) == Some(&server) {
                return (f[col("srv_op_state")].parse().unwrap(), f[col("srv_admin_state")].parse().unwrap());
            }
        }
        panic!("no {backend}/{server} in {text}");
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // SIGTERM to the master (or the single process) by pid; it ends its workers. Behind a
        // wrapper (`unshare --fork`) the master itself: the wrapper passes no signal on, and
        // it reaps the master and exits when the master ends.
        let target = if self.wrapped.is_empty() {
            Some(self.child.id())
        } else {
            sockkill::procfs::all_pids().into_iter().find(|&p| {
                sockkill::procfs::parent_pid(p).ok() == Some(self.child.id())
                    && sockkill::procfs::command(p) == "haproxy"
            })
        };
        if let Some(pid) = target {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Still there: the wrapper's --kill-child takes the master with it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The standard lab: s1 and s2 behind `be` (frontend port 8000).
fn std_backends() -> Vec<Backend> {
    vec![be("be", 8000, &[("s1", S1), ("s2", S2)])]
}

fn lab(master_worker: bool) -> (TcpListener, TcpListener, Haproxy) {
    let s1 = tag_server(S1, "s1");
    let s2 = tag_server(S2, "s2");
    (s1, s2, Haproxy::start(master_worker, &std_backends()))
}

/// HAProxy's sockets to `server` (any state but LISTEN/TIME-WAIT), from the kernel.
fn haproxy_sockets_to(server: &str, pids: &[u32]) -> Vec<TcpSocket> {
    let addr: SocketAddr = server.parse().unwrap();
    let filter = Filter {
        dst: vec![parse_cidr(&addr.ip().to_string()).unwrap()],
        dport: vec![PortRange::one(addr.port())],
        states: StateSet::DEFAULT,
        pids: pids.to_vec(),
        ..Filter::default()
    };
    sockkill::list(None, filter, false).unwrap_or_default()
}

fn clients(front: &str, n: usize) -> (Vec<Client>, Vec<Client>) {
    let all: Vec<Client> = (0..n).map(|_| Client::connect(front)).collect();
    let (s1, s2): (Vec<Client>, Vec<Client>) = all.into_iter().partition(|c| c.server == "s1");
    assert!(!s1.is_empty() && !s2.is_empty(), "roundrobin should use both servers");
    assert!(s2.iter().all(|c| c.server == "s2"));
    (s1, s2)
}

/// No HAProxy socket to `server` exists, now and for `period`.
fn assert_none_for(period: Duration, server: &str, h: &Haproxy) {
    let end = Instant::now() + period;
    loop {
        let left = haproxy_sockets_to(server, &h.pids());
        assert!(left.is_empty(), "HAProxy sockets to {server}: {left:?}");
        if Instant::now() >= end {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The shared assertions after a run that should have ended every s1 socket.
fn assert_s1_gone_s2_serving(h: &Haproxy, s1: &mut [Client], s2: &mut [Client]) {
    assert_none_for(Duration::from_secs(2), S1, h);
    for c in s1.iter_mut() {
        wait_until(Duration::from_secs(10), "an s1 client to see its connection end", || c.ended());
    }
    for c in s2.iter_mut() {
        assert_eq!(c.ask().expect("s2 client still served"), "s2");
    }
}

/// `sockkill haproxy --json --socket admin.sock --addr S1 EXTRA`, with `--master-socket` when asked.
fn run_addr_s1(h: &Haproxy, master_socket: bool, extra: &[&str]) -> (i32, Value, String) {
    let (admin, master) = (h.sock("admin.sock"), h.sock("master.sock"));
    let mut args = vec!["haproxy", "--json", "--socket", admin.as_str(), "--addr", S1];
    if master_socket {
        args.extend(["--master-socket", master.as_str()]);
    }
    args.extend_from_slice(extra);
    run_json(&args)
}

fn run_json(args: &[&str]) -> (i32, Value, String) {
    let out = sockkill_kill(args);
    let err = stderr(&out);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !doc.is_null() {
        validate(&doc);
    }
    (code(&out), doc, err)
}

#[test]
fn plain_server_removal() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let (_s1, _s2, h) = lab(false);
        let (mut s1, mut s2) = clients("127.0.0.10:8000", 4);
        assert_eq!(haproxy_sockets_to(S1, &h.pids()).len(), s1.len());

        let (rc, doc, err) = run_json(&["haproxy", "--json", "--socket", &h.sock("admin.sock"), "--server", "be/s1"]);
        record("plain removal", false, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        assert_eq!(doc["clean"], true);
        assert_eq!(doc["server_addr"], S1);
        assert_eq!(doc["answering_pid"], h.child.id());
        assert!(doc["master_pid"].is_null(), "a single HAProxy process has no master: {doc}");
        assert_eq!(doc["server_left_in_maintenance"], true);
        let sent = doc["commands_sent"].as_array().unwrap();
        // HAProxy >= 3.0 gets `wait ... srv-removable` too, and its answer is reported.
        let waits = if version() >= (3, 0) { 1 } else { 0 };
        assert_eq!(sent.len(), 2 + waits, "{doc}");
        assert_eq!(doc["wait_answer"].is_null(), waits == 0, "{doc}");
        assert_s1_gone_s2_serving(&h, &mut s1, &mut s2);
    });
}

#[test]
fn no_shutdown_means_sockkill_destroys_every_s1_socket() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let (_s1, _s2, h) = lab(false);
        let (mut s1, mut s2) = clients("127.0.0.10:8000", 4);
        let before: std::collections::BTreeSet<u64> =
            haproxy_sockets_to(S1, &h.pids()).iter().map(|s| s.cookie()).collect();
        assert_eq!(before.len(), s1.len());

        let (rc, doc, err) = run_json(&[
            "haproxy",
            "--json",
            "--no-shutdown",
            "--grace",
            "300ms",
            "--socket",
            &h.sock("admin.sock"),
            "--server",
            "be/s1",
        ]);
        record("--no-shutdown", false, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}");
        assert!(doc["commands_sent"].as_array().unwrap().is_empty());
        assert_eq!(doc["closed_by_haproxy"].as_array().unwrap().len(), 0);
        assert_eq!(destroyed_cookies(&doc, "destroyed"), before, "sockkill itself destroyed exactly the s1 sockets");
        assert_s1_gone_s2_serving(&h, &mut s1, &mut s2);
    });
}

/// A reload drops s1; the old worker keeps its s1 and s2 sessions (so it stays).
fn reload_old_worker_keeps_s2_too(master_socket: bool) {
    in_private_netns(move || {
        let (_s1, _s2, h) = lab(true);
        let (mut s1, mut s2) = clients("127.0.0.10:8000", 4);
        let (old, _new) = h.reload(&[be("be", 8000, &[("s2", S2)])]);
        let old_pid = h.host_pid(old);
        // The lingering problem itself: the old worker still holds s1's connections.
        wait_until(Duration::from_secs(5), "the old worker's s1 sockets", || {
            haproxy_sockets_to(S1, &[old_pid]).len() == s1.len()
        });
        assert!(s1.iter_mut().all(|c| c.ask().is_ok_and(|t| t == "s1")));

        let (rc, doc, err) = run_addr_s1(&h, master_socket, &["--dry-run"]);
        assert_eq!(rc, 1, "dry run: {err}\n{doc}");
        assert!(doc["pids"].as_array().unwrap().iter().any(|p| *p == old_pid), "{doc}");
        assert_eq!(doc["remaining"].as_array().unwrap().len(), s1.len(), "{doc}");

        let (rc, doc, err) = run_addr_s1(&h, master_socket, &[]);
        record("reload, old worker keeps s2 too", master_socket, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        assert_eq!(doc["master_pid"], h.master_pid());
        assert!(!doc["master_cli"].is_null(), "the master CLI is found by itself: {doc}");
        assert!(doc["destroyed"].as_array().unwrap().iter().all(|a| a["owners"][0]["pid"] == old_pid), "{doc}");
        assert_eq!(doc["summary"]["destroyed"], s1.len(), "{doc}");
        assert_s1_gone_s2_serving(&h, &mut s1, &mut s2);
        // The new worker is unaffected: new clients go to s2.
        for _ in 0..2 {
            assert_eq!(Client::connect("127.0.0.10:8000").server, "s2");
        }
    });
}

#[test]
fn reload_old_worker_keeps_s2_too_with_master_socket() {
    require!(Netns);
    let _g = serial();
    reload_old_worker_keeps_s2_too(true);
}

#[test]
fn reload_old_worker_keeps_s2_too_without_master_socket() {
    require!(Netns);
    let _g = serial();
    reload_old_worker_keeps_s2_too(false);
}

/// The main scenario: a reload drops s1 and the old worker holds only s1's
/// sessions. Once sockkill destroys them the old worker finishes its
/// soft-stop and exits: the best outcome, clean, exit 0, and the report says so.
fn reload_old_worker_holds_only_s1(master_socket: bool) {
    in_private_netns(move || {
        let _s1 = tag_server(S1, "s1");
        let _s2 = tag_server(S2, "s2");
        let h = Haproxy::start(true, &[be("be", 8000, &[("s1", S1)])]);
        let mut s1: Vec<Client> = (0..4).map(|_| Client::connect("127.0.0.10:8000")).collect();
        assert!(s1.iter().all(|c| c.server == "s1"));
        let (old, _new) = h.reload(&[be("be", 8000, &[("s2", S2)])]);
        let old_pid = h.host_pid(old);
        wait_until(Duration::from_secs(5), "the old worker's s1 sockets", || {
            haproxy_sockets_to(S1, &[old_pid]).len() == 4
        });
        let before: std::collections::BTreeSet<u64> =
            haproxy_sockets_to(S1, &[old_pid]).iter().map(|s| s.cookie()).collect();
        let (rc, doc, err) = run_addr_s1(&h, master_socket, &[]);
        record("reload, old worker holds only s1", master_socket, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        assert_eq!(doc["clean"], true, "{doc}");
        assert_eq!(destroyed_cookies(&doc, "destroyed"), before, "{doc}");
        // The old worker is gone, and the report says it went away.
        wait_until(Duration::from_secs(10), "the old worker to exit", || {
            !sockkill::procfs::Process::open(old_pid).is_ok_and(|p| p.alive())
        });
        assert!(doc["workers_exited"].as_array().unwrap().iter().any(|p| *p == old_pid), "{doc}");
        assert!(haproxy_sockets_to(S1, &h.pids()).is_empty());
        for c in &mut s1 {
            wait_until(Duration::from_secs(10), "an s1 client to see its connection end", || c.ended());
        }
        assert_eq!(Client::connect("127.0.0.10:8000").server, "s2");
    });
}

#[test]
fn reload_old_worker_holds_only_s1_with_master_socket() {
    require!(Netns);
    let _g = serial();
    reload_old_worker_holds_only_s1(true);
}

#[test]
fn reload_old_worker_holds_only_s1_without_master_socket() {
    require!(Netns);
    let _g = serial();
    reload_old_worker_holds_only_s1(false);
}

/// Two backends whose servers share one address: `--server be_a/a1` ends
/// be_a's sessions only; be_b's are HAProxy's other server's, left alone.
#[test]
fn servers_sharing_an_address_are_told_apart() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let _a = tag_server(S1, "s1");
        let h = Haproxy::start(false, &[be("be_a", 8001, &[("a1", S1)]), be("be_b", 8002, &[("b1", S1)])]);
        let mut a: Vec<Client> = (0..4).map(|_| Client::connect("127.0.0.10:8001")).collect();
        let mut b: Vec<Client> = (0..6).map(|_| Client::connect("127.0.0.10:8002")).collect();
        assert_eq!(haproxy_sockets_to(S1, &h.pids()).len(), 10);
        let (rc, doc, err) = run_json(&[
            "haproxy",
            "--json",
            "--no-shutdown",
            "--grace",
            "200ms",
            "--socket",
            &h.sock("admin.sock"),
            "--server",
            "be_a/a1",
        ]);
        record("servers sharing an address (--server be_a/a1)", false, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}");
        assert_eq!(doc["summary"]["destroyed"], 4, "{doc}");
        assert_eq!(doc["summary"]["other_server"], 6, "{doc}");
        assert!(doc["other_server"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["reason"].as_str().unwrap().contains("be_b/b1")));
        for c in &mut a {
            wait_until(Duration::from_secs(10), "a be_a client to see its connection end", || c.ended());
        }
        for c in &mut b {
            assert_eq!(c.ask().expect("be_b's sessions keep answering"), "s1");
        }
        assert_eq!(haproxy_sockets_to(S1, &h.pids()).len(), 6);
    });
}

/// A reload that keeps s1's address under another server name: `--addr`
/// ends the old worker's sessions (its server is gone from the
/// configuration) and leaves the new worker's sessions to the renamed one.
fn reload_renames_the_server(master_socket: bool) {
    in_private_netns(move || {
        let _s1 = tag_server(S1, "s1");
        let h = Haproxy::start(true, &[be("be", 8000, &[("s1", S1)])]);
        let mut old_clients: Vec<Client> = (0..3).map(|_| Client::connect("127.0.0.10:8000")).collect();
        let (old, new) = h.reload(&[be("be", 8000, &[("s1b", S1)])]);
        let (old_pid, new_pid) = (h.host_pid(old), h.host_pid(new));
        let mut new_clients: Vec<Client> = (0..2).map(|_| Client::connect("127.0.0.10:8000")).collect();
        wait_until(Duration::from_secs(5), "both workers' sockets", || {
            haproxy_sockets_to(S1, &[old_pid]).len() == 3 && haproxy_sockets_to(S1, &[new_pid]).len() == 2
        });
        let (rc, doc, err) = run_addr_s1(&h, master_socket, &[]);
        record("reload renames the server (--addr)", master_socket, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        assert_eq!(doc["summary"]["destroyed"], 3, "{doc}");
        assert_eq!(doc["summary"]["other_server"], 2, "{doc}");
        assert!(doc["destroyed"].as_array().unwrap().iter().all(|a| a["owners"][0]["pid"] == old_pid), "{doc}");
        for c in &mut old_clients {
            wait_until(Duration::from_secs(10), "an old worker's client to see its connection end", || c.ended());
        }
        for c in &mut new_clients {
            assert_eq!(c.ask().expect("the new worker's sessions keep answering"), "s1");
        }
    });
}

#[test]
fn reload_renames_the_server_with_master_socket() {
    require!(Netns);
    let _g = serial();
    reload_renames_the_server(true);
}

#[test]
fn reload_renames_the_server_without_master_socket() {
    require!(Netns);
    let _g = serial();
    reload_renames_the_server(false);
}

/// When sockkill cannot tell, it leaves the socket alone and says so: an old
/// worker that cannot be asked (master-worker without a master CLI) holds
/// sessions at an address a server of the current configuration shares. Its
/// sockets are reported ambiguous, none is destroyed, and the run exits 1.
#[test]
fn an_old_worker_that_cannot_be_asked_at_a_shared_address_is_ambiguous() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let _s1 = tag_server(S1, "s1");
        let h =
            Haproxy::start_with(true, false, &[be("be_a", 8001, &[("a1", S1)]), be("be_b", 8002, &[("b1", S1)])], &[]);
        let mut a: Vec<Client> = (0..3).map(|_| Client::connect("127.0.0.10:8001")).collect();
        let (old, _new) = h.reload(&[be("be_b", 8002, &[("b1", S1)])]);
        let old_pid = h.host_pid(old);
        wait_until(Duration::from_secs(5), "the old worker's sockets", || {
            haproxy_sockets_to(S1, &[old_pid]).len() == 3
        });
        let (rc, doc, err) = run_json(&[
            "haproxy",
            "--json",
            "--grace",
            "200ms",
            "--settle",
            "300ms",
            "--socket",
            &h.sock("admin.sock"),
            "--addr",
            S1,
        ]);
        record("old worker without master CLI, shared address (--addr)", false, &doc, rc);
        assert_eq!(rc, 1, "{err}\n{doc}");
        assert!(doc["master_cli"].is_null(), "{doc}");
        assert_eq!(doc["summary"]["destroyed"], 0, "{doc}");
        assert_eq!(doc["summary"]["ambiguous"], 3, "{doc}");
        for s in doc["ambiguous"].as_array().unwrap() {
            let why = s["reason"].as_str().unwrap();
            assert!(why.contains("cannot be asked") && why.contains("be_b/b1"), "{why}");
        }
        // Left alone indeed: the sessions still answer.
        for c in &mut a {
            assert_eq!(c.ask().expect("an ambiguous session is left alone"), "s1");
        }
        assert_eq!(haproxy_sockets_to(S1, &[old_pid]).len(), 3);
    });
}

/// s1 is a listener that never accepts (backlog 0, queue filled): HAProxy's
/// streams to it sit in SYN-SENT and retry.
#[test]
fn connect_retry_syn_sent_sockets_end() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let _s2 = tag_server(S2, "s2");
        let fd = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let s1_addr: std::net::SocketAddrV4 = S1.parse().unwrap();
        nix::sys::socket::bind(fd.as_raw_fd(), &nix::sys::socket::SockaddrIn::from(s1_addr)).unwrap();
        nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::new(0).unwrap()).unwrap();
        let _filler = TcpStream::connect(S1).unwrap(); // fills the accept queue
        let h = Haproxy::start(false, &std_backends());

        // Clients whose streams go to s1 never get an answer: connect without asking.
        let streams: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect("127.0.0.10:8000").unwrap()).collect();
        let pids = h.pids();
        wait_until(Duration::from_secs(5), "SYN-SENT sockets to s1", || {
            haproxy_sockets_to(S1, &pids).iter().any(|s| s.state_name() == "SYN-SENT")
        });

        let (rc, doc, err) = run_json(&["haproxy", "--json", "--socket", &h.sock("admin.sock"), "--server", "be/s1"]);
        record("connect-retry, with shutdown", false, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        assert_none_for(Duration::from_secs(2), S1, &h);

        // Without the shutdown HAProxy keeps retrying: every destroyed SYN-SENT
        // socket is replaced about a second later, until `retries` runs out. Only
        // passes plus the settle period get them all.
        let ready = h.api().command("set server be/s1 state ready").unwrap();
        parse::expect_empty("set server", &ready).unwrap();
        let streams2: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect("127.0.0.10:8000").unwrap()).collect();
        wait_until(Duration::from_secs(5), "SYN-SENT sockets to s1 again", || {
            haproxy_sockets_to(S1, &pids).iter().any(|s| s.state_name() == "SYN-SENT")
        });
        let (rc, doc, err) = run_json(&[
            "haproxy",
            "--json",
            "--no-shutdown",
            "--grace",
            "200ms",
            "--socket",
            &h.sock("admin.sock"),
            "--server",
            "be/s1",
        ]);
        record("connect-retry, --no-shutdown", false, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        let destroyed: Vec<&Value> =
            doc["destroyed"].as_array().unwrap().iter().filter(|a| a["outcome"] == "destroyed").collect();
        assert!(destroyed.iter().all(|a| a["state"] == "SYN-SENT"), "{doc}");
        let passes = destroyed.iter().map(|a| a["pass"].as_u64().unwrap()).max().unwrap_or(0);
        assert!(passes >= 2, "HAProxy's retries should need several passes: {doc}");
        assert_none_for(Duration::from_secs(2), S1, &h);
        // HAProxy gave up on the streams to s1: their clients are closed; the
        // ones that went to s2 are served.
        let mut ended = 0;
        for mut s in streams2 {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(b"who\n");
            let mut line = String::new();
            match BufReader::new(&mut s).read_line(&mut line) {
                Ok(0) => ended += 1,
                Ok(_) => assert_eq!(line, "s2\n"),
                Err(e) if !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    ended += 1
                }
                Err(e) => panic!("client of a given-up stream not ended: {e}"),
            }
        }
        assert!(ended >= 1, "no stream to s1 was ended");
        drop(streams);
    });
}

#[test]
fn errors_are_one_line_exit_2_and_change_nothing() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let (_s1, _s2, h) = lab(false);
        let (mut s1, _s2c) = clients("127.0.0.10:8000", 4);
        let pids = h.pids();
        let before = haproxy_sockets_to(S1, &pids).len();

        // A unix socket that accepts and never answers.
        let silent_path = h.dir.join("silent.sock");
        let silent = std::os::unix::net::UnixListener::bind(&silent_path).unwrap();
        let _hold = std::thread::spawn(move || {
            let conns: Vec<_> = silent.incoming().take(2).collect();
            std::thread::sleep(Duration::from_secs(5));
            drop(conns);
        });
        let admin = h.sock("admin.sock");
        let user = h.sock("user.sock");
        let silent_s = silent_path.to_string_lossy().into_owned();
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (vec!["--socket", &silent_s, "--api-timeout", "1s", "--server", "be/s1"], "no answer"),
            (vec!["--socket", &admin, "--server", "nob/s1"], "no backend nob"),
            (vec!["--socket", &admin, "--server", "be/zz"], "no server zz"),
            (vec!["--socket", &user, "--server", "be/s1"], "Permission denied"),
            (vec!["--socket", &admin, "--addr", "127.0.0.11"], "no port"),
            // More targets than --max: refused before any command is sent.
            (vec!["--socket", &admin, "--server", "be/s1", "--max", "1"], "more than --max 1"),
        ];
        for (args, expect) in cases {
            let mut full = vec!["haproxy", "--json"];
            full.extend(args);
            let out = sockkill_kill(&full);
            let err = stderr(&out);
            assert_eq!(code(&out), 2, "{full:?}: {err}");
            let error_lines: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
            assert_eq!(error_lines.len(), 1, "{full:?}: {err}");
            assert!(err.contains(expect), "{full:?}: expected {expect:?} in {err}");
            assert!(!err.contains("panicked"));
            let doc = json(&out);
            assert_eq!(doc["commands_sent"], serde_json::json!([]), "{doc}");
            assert_eq!(doc["server_left_in_maintenance"], false, "{doc}");
        }
        // Nothing destroyed, s1 not in maintenance: its clients are still served.
        assert_eq!(haproxy_sockets_to(S1, &pids).len(), before);
        for c in &mut s1 {
            assert_eq!(c.ask().unwrap(), "s1");
        }
        assert_eq!(h.server_state("be", "s1").1, 0, "s1's admin state changed");
    });
}

#[test]
fn dry_run_detects_lingering_sockets() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let (_s1, _s2, h) = lab(false);
        let (mut s1, _s2c) = clients("127.0.0.10:8000", 4);
        let (rc, doc, err) =
            run_json(&["haproxy", "--json", "--dry-run", "--socket", &h.sock("admin.sock"), "--server", "be/s1"]);
        assert_eq!(rc, 1, "{err}");
        assert_eq!(doc["remaining"].as_array().unwrap().len(), s1.len());
        assert_eq!(doc["scur"], s1.len());
        for c in &mut s1 {
            assert_eq!(c.ask().unwrap(), "s1");
        }
        assert_eq!(h.server_state("be", "s1").1, 0, "a dry run changed s1's state");
        // Nothing to an unused address: clean.
        let (rc, _, err) =
            run_json(&["haproxy", "--dry-run", "--socket", &h.sock("admin.sock"), "--addr", "127.0.0.13:9003"]);
        assert_eq!(rc, 0, "{err}");
    });
}

/// HAProxy >= 3.0 answers `wait <grace> srv-removable` after up to the
/// grace period: a grace longer than --api-timeout works, and the answer is
/// in the report. Before 3.0 no `wait` is sent.
#[test]
fn wait_srv_removable_longer_than_the_api_timeout() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let (_s1, _s2, h) = lab(false);
        let (mut s1, mut s2) = clients("127.0.0.10:8000", 4);
        let (rc, doc, err) = run_json(&[
            "haproxy",
            "--json",
            "--grace",
            "3s",
            "--api-timeout",
            "1s",
            "--socket",
            &h.sock("admin.sock"),
            "--server",
            "be/s1",
        ]);
        record("grace 3s > api-timeout 1s", false, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        let sent = doc["commands_sent"].as_array().unwrap();
        if version() >= (3, 0) {
            assert!(sent.iter().any(|c| c.as_str().unwrap().starts_with("wait 3000ms srv-removable be/s1")), "{doc}");
            assert!(["done", "expired", "failed"].contains(&doc["wait_answer"].as_str().unwrap()), "{doc}");
        } else {
            assert!(sent.iter().all(|c| !c.as_str().unwrap().starts_with("wait")), "{doc}");
            assert!(doc["wait_answer"].is_null());
        }
        assert_s1_gone_s2_serving(&h, &mut s1, &mut s2);
    });
}

/// A relay in front of the stats socket that holds back the answer to
/// `show info` (a busy HAProxy), to send a signal while it is pending.
fn slow_relay(to: String, path: PathBuf) {
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let to = to.clone();
            std::thread::spawn(move || {
                let mut cmd = Vec::new();
                let _ = std::io::Read::read_to_end(&mut &c, &mut cmd);
                if String::from_utf8_lossy(&cmd).starts_with("show info") {
                    std::thread::sleep(Duration::from_secs(3));
                }
                let Ok(mut up) = std::os::unix::net::UnixStream::connect(&to) else { return };
                let _ = up.write_all(&cmd);
                let _ = up.shutdown(std::net::Shutdown::Write);
                let mut answer = Vec::new();
                let _ = std::io::Read::read_to_end(&mut up, &mut answer);
                let _ = (&c).write_all(&answer);
            });
        }
    });
}

fn spawn_sockkill(args: &[&str]) -> Child {
    assert_not_root_netns();
    Command::new(BIN).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Signals at every point: while the first `show info` is pending (nothing
/// state-changing is sent: s1 stays ready, exit 2), during the grace period
/// (exit 1: HAProxy was changed; never clean), and a second SIGINT during a
/// long settle wait (the run ends at once, report printed).
#[test]
fn signals_at_every_point() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let (_s1, _s2, h) = lab(false);
        let (mut s1, _s2c) = clients("127.0.0.10:8000", 4);
        let relay = h.dir.join("slow.sock");
        slow_relay(h.sock("admin.sock"), relay.clone());

        // 1. SIGINT while `show info` is still being answered.
        let child = spawn_sockkill(&["haproxy", "--json", "--socket", relay.to_str().unwrap(), "--server", "be/s1"]);
        std::thread::sleep(Duration::from_millis(500));
        let sent = Instant::now();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(sent.elapsed() < Duration::from_secs(2), "{:?}", sent.elapsed());
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
        std::thread::sleep(Duration::from_secs(3)); // the relay's held-back answer lands nowhere
        assert_eq!(h.server_state("be", "s1").1, 0, "s1 was put in maintenance after the signal");
        for c in &mut s1 {
            assert_eq!(c.ask().unwrap(), "s1");
        }

        // 2. SIGTERM during the grace period (--no-shutdown is not given: HAProxy was told).
        let child = spawn_sockkill(&[
            "haproxy",
            "--json",
            "--grace",
            "20s",
            "--deadline",
            "60s",
            "--socket",
            &h.sock("admin.sock"),
            "--server",
            "be/s2",
        ]);
        wait_until(Duration::from_secs(10), "s2 in maintenance", || h.server_state("be", "s2").1 != 0);
        let sent = Instant::now();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(sent.elapsed() < Duration::from_secs(3), "{:?}", sent.elapsed());
        assert_eq!(code(&out), 1, "{}", stderr(&out));
        let doc = json(&out);
        assert_eq!(doc["interrupted"], true, "{doc}");
        assert_eq!(doc["clean"], false, "{doc}");
        assert_eq!(doc["server_left_in_maintenance"], true, "{doc}");

        // 3. Two SIGINTs during a 20 s settle wait: the run ends within seconds.
        let child = spawn_sockkill(&[
            "haproxy",
            "--json",
            "--no-shutdown",
            "--grace",
            "100ms",
            "--settle",
            "20s",
            "--socket",
            &h.sock("admin.sock"),
            "--server",
            "be/s1",
        ]);
        for c in &mut s1 {
            wait_until(Duration::from_secs(10), "the s1 sessions destroyed", || c.ended());
        }
        let sent = Instant::now();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(sent.elapsed() < Duration::from_secs(5), "{:?}", sent.elapsed());
        assert_eq!(code(&out), 1, "{}", stderr(&out));
        let doc = json(&out);
        assert_eq!(doc["interrupted"], true, "{doc}");
        assert_eq!(doc["summary"]["destroyed"], 2, "{doc}");
        assert!(doc["duration_ms"].as_u64().unwrap() < 15_000, "{doc}");
    });
}

/// HAProxy as a container runs it: its own pid, mount and network namespaces
/// (the master is pid 1 there). After a reload that drops s1, a dry run from
/// inside (nsenter) sees the old worker's sessions (exit 1), and a run from
/// the host — another pid and network namespace — ends them (exit 0).
#[test]
fn haproxy_in_a_container() {
    require!(Root);
    let _g = serial();
    let ns = NamedNetns::create();
    assert_ns_not_root(ns.path().to_str().unwrap());
    let (h, servers, mut s1) = {
        let netns = ns.name.clone();
        ns.run(move || {
            let servers = (tag_server(S1, "s1"), tag_server(S2, "s2"));
            let h = Haproxy::start_with(
                true,
                true,
                &[be("be", 8000, &[("s1", S1)])],
                &["ip", "netns", "exec", &netns, "unshare", "--pid", "--fork", "--kill-child", "--mount-proc"],
            );
            let s1: Vec<Client> = (0..3).map(|_| Client::connect("127.0.0.10:8000")).collect();
            (h, servers, s1)
        })
    };
    let master = h.master_pid();
    assert_eq!(sockkill::procfs::nspid(master).and_then(|v| v.last().copied()), Some(1), "master is pid 1 inside");
    let (old, _new) = h.reload(&[be("be", 8000, &[("s2", S2)])]);
    let old_pid = h.host_pid(old);
    assert_ne!(old, old_pid, "the old worker's pid differs inside and out");

    // From inside: nsenter into its pid, mount and network namespaces.
    let out = Command::new("nsenter")
        .args(["-t", &master.to_string(), "-p", "-m", "-n", BIN, "haproxy", "--json", "--dry-run"])
        .args(["--socket", &h.sock("admin.sock"), "--addr", S1])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let doc = json(&out);
    record("container: dry run from inside", false, &doc, code(&out));
    assert_eq!(code(&out), 1, "{}\n{doc}", stderr(&out));
    assert_eq!(doc["remaining"].as_array().unwrap().len(), 3, "{doc}");

    // From the host (root network namespace, root pid namespace).
    let out = sockkill(&["haproxy", "--json", "--socket", &h.sock("admin.sock"), "--addr", S1]);
    let doc = json(&out);
    record("container: run from the host", false, &doc, code(&out));
    assert_eq!(code(&out), 0, "{}\n{doc}\n{}", stderr(&out), h.log());
    assert_eq!(doc["summary"]["destroyed"], 3, "{doc}");
    assert!(doc["pids"].as_array().unwrap().iter().any(|p| *p == old_pid), "{doc}");
    let mut s1 = std::mem::take(&mut s1);
    ns.run(move || {
        for c in &mut s1 {
            wait_until(Duration::from_secs(10), "an s1 client to see its connection end", || c.ended());
        }
        assert_eq!(Client::connect("127.0.0.10:8000").server, "s2");
    });
    drop(h);
    drop(servers);
}
