//! `sockkill haproxy` against real HAProxy (Debian's 2.6, installed by
//! scripts/install-deps.sh), in private network namespaces.
//!
//! Lab: clients -> HAProxy frontend 127.0.0.10:8000 -> backend `be` with
//! servers s1 (127.0.0.11:9001) and s2 (127.0.0.12:9002), TCP mode, long
//! timeouts. The servers answer every line with their name, so each client
//! knows which server it reached. Tests run one at a time (a shared lock).

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
use sockkill::haproxy::api::{Api, Endpoint};
use sockkill::haproxy::parse;
use sockkill::{Engine, Filter, PortRange, Query, Socket, StateSet};

static SERIAL: Mutex<()> = Mutex::new(());

const FRONT: &str = "127.0.0.10:8000";
const S1: &str = "127.0.0.11:9001";
const S2: &str = "127.0.0.12:9002";

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls `cond` every 50 ms until it holds or `limit` passes.
fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
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
    fn connect() -> Client {
        let stream = TcpStream::connect(FRONT).expect("connect to HAProxy");
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
        self.stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
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

/// One HAProxy instance in the calling thread's namespace; killed by pid on drop.
struct Haproxy {
    dir: PathBuf,
    child: Child,
}

fn config(dir: &Path, servers: &[(&str, &str)], extra_defaults: &str) -> String {
    let mut cfg = format!(
        "global\n    stats socket {d}/admin.sock level admin\n    stats socket {d}/user.sock level user\n\
         defaults\n    mode tcp\n    timeout connect 30s\n    timeout client 1h\n    timeout server 1h\n    retries 3\n{extra_defaults}\
         frontend fe\n    bind {FRONT}\n    default_backend be\n\
         backend be\n    balance roundrobin\n",
        d = dir.display()
    );
    for (name, addr) in servers {
        cfg += &format!("    server {name} {addr}\n");
    }
    cfg
}

impl Haproxy {
    fn start(master_worker: bool, servers: &[(&str, &str)], extra_defaults: &str) -> Haproxy {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sockkill-hx-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("haproxy.cfg"), config(&dir, servers, extra_defaults)).unwrap();
        let log = fs::File::create(dir.join("haproxy.log")).unwrap();
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db");
        if master_worker {
            cmd.args(["-W", "-S"]).arg(dir.join("master.sock"));
        }
        cmd.arg("-f").arg(dir.join("haproxy.cfg"));
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().expect("start haproxy");
        let h = Haproxy { dir, child };
        let admin = Endpoint::parse(&h.sock("admin.sock"));
        wait_until(Duration::from_secs(10), "HAProxy to answer", || {
            Api::new(admin.clone(), Duration::from_secs(2)).is_ok_and(|a| a.command("show info").is_ok())
        });
        wait_until(Duration::from_secs(5), "the frontend", || TcpStream::connect(FRONT).is_ok());
        if master_worker {
            // The master serves its CLI from its event loop, after its signal
            // handlers are in place: only then may a test send it SIGUSR2.
            let master = Endpoint::parse(&h.sock("master.sock"));
            wait_until(Duration::from_secs(10), "the master CLI", || {
                Api::new(master.clone(), Duration::from_secs(2))
                    .is_ok_and(|a| a.command("show proc").is_ok_and(|t| t.contains("worker")))
            });
        }
        h
    }

    fn sock(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn api(&self) -> Api {
        Api::new(Endpoint::parse(&self.sock("admin.sock")), Duration::from_secs(2)).unwrap()
    }

    fn worker_pid(&self) -> u32 {
        parse::parse_info(&self.api().command("show info").unwrap()).unwrap().pid
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // SIGTERM to the master (or the single process) by pid; it ends its workers.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The standard lab: s1 and s2 answering with their names, HAProxy in front.
/// The listeners live as long as the returned tuple.
fn lab(master_worker: bool) -> (TcpListener, TcpListener, Haproxy) {
    let s1 = tag_server(S1, "s1");
    let s2 = tag_server(S2, "s2");
    (s1, s2, Haproxy::start(master_worker, &[("s1", S1), ("s2", S2)], ""))
}

/// HAProxy's sockets to `server` (any state but LISTEN/TIME-WAIT), from the kernel.
fn haproxy_sockets_to(server: &str, pids: &[u32]) -> Vec<Socket> {
    let addr: SocketAddr = server.parse().unwrap();
    let filter = Filter {
        dst: vec![addr.ip().into()],
        dport: vec![PortRange { lo: addr.port(), hi: addr.port() }],
        states: StateSet::DEFAULT,
        pids: pids.to_vec(),
        ..Filter::default()
    };
    Engine::open(None).unwrap().collect(&Query::new(filter).unwrap()).unwrap()
}

fn haproxy_pids(h: &Haproxy) -> Vec<u32> {
    let master = h.child.id();
    let mut pids = vec![master];
    pids.extend(sockkill::procfs::all_pids().into_iter().filter(|&p| {
        sockkill::procfs::parent_pid(p).ok() == Some(master) && sockkill::procfs::command(p) == "haproxy"
    }));
    pids
}

fn clients(n: usize) -> (Vec<Client>, Vec<Client>) {
    let all: Vec<Client> = (0..n).map(|_| Client::connect()).collect();
    let (s1, s2): (Vec<Client>, Vec<Client>) = all.into_iter().partition(|c| c.server == "s1");
    assert!(!s1.is_empty() && !s2.is_empty(), "roundrobin should use both servers");
    assert!(s2.iter().all(|c| c.server == "s2"));
    (s1, s2)
}

/// The shared assertions after a run that should have ended every s1 socket.
fn assert_s1_gone_s2_serving(h: &Haproxy, s1: &mut [Client], s2: &mut [Client]) {
    let pids = haproxy_pids(h);
    assert!(haproxy_sockets_to(S1, &pids).is_empty(), "HAProxy sockets to s1 remain");
    // None reappears within the next 2 s.
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        let again = haproxy_sockets_to(S1, &haproxy_pids(h));
        assert!(again.is_empty(), "HAProxy socket to s1 reappeared: {again:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for c in s1.iter_mut() {
        wait_until(Duration::from_secs(10), "an s1 client to see its connection end", || c.ended());
    }
    for c in s2.iter_mut() {
        assert_eq!(c.ask().expect("s2 client still served"), "s2");
    }
}

/// Asserts no HAProxy socket to s1 exists, now and for `period`.
fn assert_none_for(period: Duration, pids: &[u32]) {
    let end = Instant::now() + period;
    loop {
        let left = haproxy_sockets_to(S1, pids);
        assert!(left.is_empty(), "HAProxy sockets to s1: {left:?}");
        if Instant::now() >= end {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_json(args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = sockkill_kill(args);
    let err = stderr(&out);
    (code(&out), serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null), err)
}

#[test]
fn plain_server_removal() {
    let _g = serial();
    in_private_netns(|| {
        let (_s1, _s2, h) = lab(false);
        let (mut s1, mut s2) = clients(4);
        assert_eq!(haproxy_sockets_to(S1, &haproxy_pids(&h)).len(), s1.len());

        let (rc, doc, err) = run_json(&["haproxy", "--json", "--socket", &h.sock("admin.sock"), "--server", "be/s1"]);
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        assert_eq!(doc["clean"], true);
        assert_eq!(doc["server_addr"], S1);
        assert_eq!(doc["pids"][0], h.worker_pid());
        assert!(doc["haproxy_version"].as_str().unwrap().starts_with("2."));
        assert_eq!(doc["commands_sent"].as_array().unwrap().len(), 2);
        assert_s1_gone_s2_serving(&h, &mut s1, &mut s2);
    });
}

#[test]
fn no_shutdown_means_sockkill_destroys_every_s1_socket() {
    let _g = serial();
    in_private_netns(|| {
        let (_s1, _s2, h) = lab(false);
        let (mut s1, mut s2) = clients(4);
        let before: Vec<u64> = haproxy_sockets_to(S1, &haproxy_pids(&h)).iter().map(|s| s.cookie()).collect();
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
        assert_eq!(rc, 0, "{err}\n{doc}");
        assert!(doc["commands_sent"].as_array().unwrap().is_empty());
        assert_eq!(doc["closed_by_haproxy"].as_array().unwrap().len(), 0);
        let destroyed: Vec<u64> = doc["destroyed"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["outcome"] == "destroyed")
            .map(|a| a["cookie"].as_u64().unwrap())
            .collect();
        let mut want = before.clone();
        want.sort_unstable();
        let mut got = destroyed.clone();
        got.sort_unstable();
        assert_eq!(got, want, "sockkill itself destroyed exactly the s1 sockets");
        assert_s1_gone_s2_serving(&h, &mut s1, &mut s2);
    });
}

#[test]
fn reload_old_worker_keeps_s1_until_sockkill() {
    let _g = serial();
    in_private_netns(|| {
        let (_s1, _s2, h) = lab(true);
        let old_worker = h.worker_pid();
        let (mut s1, mut s2) = clients(4);

        // Reload without s1: the master forks a new worker; the old one keeps its sessions.
        fs::write(h.dir.join("haproxy.cfg"), config(&h.dir, &[("s2", S2)], "")).unwrap();
        unsafe { libc::kill(h.child.id() as i32, libc::SIGUSR2) };
        let end = Instant::now() + Duration::from_secs(10);
        let new_worker = || h.api().command("show info").ok().and_then(|t| parse::parse_info(&t).ok());
        while new_worker().is_none_or(|i| i.pid == old_worker) {
            assert!(Instant::now() < end, "no new worker 10 s after SIGUSR2; HAProxy's log:\n{}", h.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        let master = Api::new(Endpoint::parse(&h.sock("master.sock")), Duration::from_secs(2)).unwrap();
        let procs = parse::parse_proc(&master.command("show proc").unwrap()).unwrap();
        assert!(procs.iter().any(|p| p.pid == old_worker && p.old), "old worker draining: {procs:?}");
        // The lingering problem itself: the old worker still holds s1's connections.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(haproxy_sockets_to(S1, &[old_worker]).len(), s1.len());
        assert!(s1.iter_mut().all(|c| c.ask().is_ok_and(|t| t == "s1")));

        // The master CLI lists the old worker too: a dry run through it sees the lingering sockets.
        let (rc, doc, err) = run_json(&[
            "haproxy",
            "--json",
            "--dry-run",
            "--socket",
            &h.sock("admin.sock"),
            "--master-socket",
            &h.sock("master.sock"),
            "--addr",
            S1,
        ]);
        assert_eq!(rc, 1, "{err}\n{doc}");
        assert!(doc["pids"].as_array().unwrap().iter().any(|p| *p == old_worker), "{doc}");
        assert_eq!(doc["remaining"].as_array().unwrap().len(), s1.len());

        let (rc, doc, err) = run_json(&["haproxy", "--json", "--socket", &h.sock("admin.sock"), "--addr", S1]);
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        assert_eq!(doc["master_pid"], h.child.id());
        assert!(doc["pids"].as_array().unwrap().iter().any(|p| *p == old_worker), "{doc}");
        assert!(doc["destroyed"].as_array().unwrap().iter().all(|a| a["owners"][0]["pid"] == old_worker));
        assert_s1_gone_s2_serving(&h, &mut s1, &mut s2);
        // The new worker is unaffected: new clients go to s2.
        for _ in 0..2 {
            assert_eq!(Client::connect().server, "s2");
        }
    });
}

/// s1 is a listener that never accepts (backlog 0, queue filled): HAProxy's
/// streams to it sit in SYN-SENT and retry.
#[test]
fn connect_retry_syn_sent_sockets_end() {
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
        let h = Haproxy::start(false, &[("s1", S1), ("s2", S2)], "");

        // Clients whose streams go to s1 never get an answer: connect without asking.
        let streams: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(FRONT).unwrap()).collect();
        let pids = haproxy_pids(&h);
        wait_until(Duration::from_secs(5), "SYN-SENT sockets to s1", || {
            haproxy_sockets_to(S1, &pids).iter().any(|s| s.state_name() == "SYN-SENT")
        });

        // With the server put in maintenance, HAProxy 2.6 drops these streams
        // itself; what matters is that none is left or comes back.
        let (rc, doc, err) = run_json(&["haproxy", "--json", "--socket", &h.sock("admin.sock"), "--server", "be/s1"]);
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        assert_none_for(Duration::from_secs(2), &pids);

        // Without the shutdown HAProxy keeps retrying: every destroyed SYN-SENT
        // socket is replaced about a second later, until `retries` runs out. Only
        // passes plus the settle period get them all.
        let ready = h.api().command("set server be/s1 state ready").unwrap();
        parse::check_answer("set server", &ready).unwrap();
        let streams2: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(FRONT).unwrap()).collect();
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
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        let destroyed: Vec<&serde_json::Value> =
            doc["destroyed"].as_array().unwrap().iter().filter(|a| a["outcome"] == "destroyed").collect();
        assert!(destroyed.iter().all(|a| a["state"] == "SYN-SENT"), "{doc}");
        let passes = destroyed.iter().map(|a| a["pass"].as_u64().unwrap()).max().unwrap_or(0);
        assert!(passes >= 2, "HAProxy's retries should need several passes: {doc}");
        assert_none_for(Duration::from_secs(2), &pids);
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
    let _g = serial();
    in_private_netns(|| {
        let (_s1, _s2, h) = lab(false);
        let (mut s1, _s2c) = clients(4);
        let pids = haproxy_pids(&h);
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
        let cases: Vec<(Vec<String>, &str)> = vec![
            (vec!["--socket".into(), h.sock("missing.sock"), "--server".into(), "be/s1".into()], "no such file"),
            (vec!["--socket".into(), h.sock("haproxy.cfg"), "--server".into(), "be/s1".into()], "not a unix socket"),
            (
                vec![
                    "--socket".into(),
                    silent_path.to_string_lossy().into(),
                    "--api-timeout".into(),
                    "1s".into(),
                    "--server".into(),
                    "be/s1".into(),
                ],
                "no answer",
            ),
            (vec!["--socket".into(), admin.clone(), "--server".into(), "nob/s1".into()], "backend"),
            (vec!["--socket".into(), admin.clone(), "--server".into(), "be/zz".into()], "no server zz"),
            (vec!["--socket".into(), h.sock("user.sock"), "--server".into(), "be/s1".into()], "Permission denied"),
            (vec!["--socket".into(), admin.clone(), "--addr".into(), "127.0.0.11".into()], "no port"),
        ];
        for (args, expect) in cases {
            let mut full = vec!["haproxy".to_string()];
            full.extend(args);
            let argv: Vec<&str> = full.iter().map(String::as_str).collect();
            let out = sockkill_kill(&argv);
            let err = stderr(&out);
            assert_eq!(code(&out), 2, "{argv:?}: {err}");
            let error_lines: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
            assert_eq!(error_lines.len(), 1, "{argv:?}: {err}");
            assert!(err.contains(expect), "{argv:?}: expected {expect:?} in {err}");
            assert!(!err.contains("panicked"));
        }
        // Nothing destroyed, s1 not in maintenance: its clients are still served.
        assert_eq!(haproxy_sockets_to(S1, &pids).len(), before);
        for c in &mut s1 {
            assert_eq!(c.ask().unwrap(), "s1");
        }
        let stat = parse::parse_stat(&h.api().command("show stat").unwrap()).unwrap();
        let row = stat.iter().find(|r| r.proxy == "be" && r.server == "s1").unwrap();
        assert_ne!(row.status, "MAINT");
    });
}

#[test]
fn dry_run_detects_lingering_sockets() {
    let _g = serial();
    in_private_netns(|| {
        let (_s1, _s2, h) = lab(false);
        let (mut s1, _s2c) = clients(4);
        let (rc, doc, err) =
            run_json(&["haproxy", "--json", "--dry-run", "--socket", &h.sock("admin.sock"), "--server", "be/s1"]);
        assert_eq!(rc, 1, "{err}");
        assert_eq!(doc["remaining"].as_array().unwrap().len(), s1.len());
        assert_eq!(doc["scur"], s1.len());
        for c in &mut s1 {
            assert_eq!(c.ask().unwrap(), "s1");
        }
        // Nothing to s2's (unused) address: clean.
        let (rc, _, err) =
            run_json(&["haproxy", "--dry-run", "--socket", &h.sock("admin.sock"), "--addr", "127.0.0.13:9003"]);
        assert_eq!(rc, 0, "{err}");
    });
}
