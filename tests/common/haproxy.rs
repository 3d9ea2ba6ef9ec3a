//! The HAProxy lab shared by the end-to-end suites (haproxy_e2e.rs in TCP
//! mode, haproxy_http.rs in HTTP mode): an HAProxy binary of the matrix
//! (`$SOCKKILL_HAPROXY`, default Debian's), started in the calling thread's
//! private namespace, ended by pid; servers that say who they are; clients
//! that see their connection end; the kernel's view of HAProxy's sockets.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use sockkill::filter::parse_cidr;
use sockkill::haproxy::api::{Api, Endpoint};
use sockkill::haproxy::parse;
use sockkill::{Filter, PortRange, StateSet, TcpSocket};

use super::*;

pub static SERIAL: Mutex<()> = Mutex::new(());

pub const S1: &str = "127.0.0.11:9001";
pub const S2: &str = "127.0.0.12:9002";

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn haproxy_bin() -> String {
    std::env::var("SOCKKILL_HAPROXY").unwrap_or_else(|_| "haproxy".into())
}

/// The HAProxy version under test, e.g. (2, 6).
pub fn version() -> (u32, u32) {
    let out = Command::new(haproxy_bin()).arg("-v").output().expect("run haproxy -v");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = text.split_whitespace().nth(2).unwrap_or("0.0");
    let mut it = v.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse().ok());
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Appends what a scenario did to `$SOCKKILL_MATRIX_LOG` (for docs/haproxy-matrix.md).
pub fn record(scenario: &str, master_socket: bool, doc: &Value, code: i32) {
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
pub fn tag_server(bind: &str, tag: &'static str) -> TcpListener {
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
pub struct Client {
    pub stream: TcpStream,
    pub reader: BufReader<TcpStream>,
    pub server: String,
}

impl Client {
    pub fn connect(front: &str) -> Client {
        let stream = TcpStream::connect(front).expect("connect to HAProxy");
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut c = Client { stream, reader, server: String::new() };
        c.server = c.ask().expect("first answer through HAProxy");
        c
    }

    pub fn ask(&mut self) -> std::io::Result<String> {
        who(&mut self.stream, &mut self.reader)
    }

    /// True once HAProxy ended this client's connection (EOF or reset).
    pub fn ended(&mut self) -> bool {
        peer_ended(&self.stream, &mut self.reader)
    }
}

/// Asks "who" on a connection through HAProxy; the tag of the server that
/// answered (every lab server answers each line with its tag).
pub fn who(stream: &mut TcpStream, reader: &mut impl BufRead) -> std::io::Result<String> {
    writeln!(stream, "who")?;
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
    }
    Ok(line.trim().to_string())
}

/// True once the other end ended the connection (EOF or reset), looking for
/// 50 ms; whatever data arrives meanwhile is read and dropped.
pub fn peer_ended(stream: &TcpStream, reader: &mut impl std::io::Read) -> bool {
    stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = [0u8; 512];
    let r = reader.read(&mut buf);
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match r {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

/// Whether `pid` has a handler for signal `sig` (SigCgt in /proc/PID/status).
pub fn catches(pid: u32, sig: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("SigCgt:")).map(|h| h.trim().to_string()))
        .and_then(|h| u64::from_str_radix(&h, 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

/// A backend: its frontend's port on 127.0.0.10, and its servers.
pub struct Backend {
    pub name: &'static str,
    pub port: u16,
    pub servers: Vec<(&'static str, &'static str)>,
}

pub fn be(name: &'static str, port: u16, servers: &[(&'static str, &'static str)]) -> Backend {
    Backend { name, port, servers: servers.to_vec() }
}

/// What HAProxy runs: its `defaults` and proxies, after the lab's `global`
/// section (the stats sockets).
pub trait Layout {
    fn proxies(&self) -> String;
}

/// TCP mode: a frontend on 127.0.0.10 per backend, long timeouts, 3 retries.
impl Layout for [Backend] {
    fn proxies(&self) -> String {
        let mut cfg = "defaults\n    mode tcp\n    timeout connect 30s\n    timeout client 1h\n    timeout server 1h\n    retries 3\n"
            .to_string();
        for b in self {
            cfg +=
                &format!("frontend fe_{n}\n    bind 127.0.0.10:{p}\n    default_backend {n}\n", n = b.name, p = b.port);
            cfg += &format!("backend {}\n    balance roundrobin\n", b.name);
            for (s, addr) in &b.servers {
                cfg += &format!("    server {s} {addr}\n");
            }
        }
        cfg
    }
}

impl<const N: usize> Layout for [Backend; N] {
    fn proxies(&self) -> String {
        self[..].proxies()
    }
}

impl Layout for Vec<Backend> {
    fn proxies(&self) -> String {
        self[..].proxies()
    }
}

/// Written out (HTTP mode and other shapes).
impl Layout for str {
    fn proxies(&self) -> String {
        self.to_string()
    }
}

pub fn config(dir: &Path, layout: &(impl Layout + ?Sized)) -> String {
    format!(
        "global\n    stats socket {d}/admin.sock level admin\n    stats socket {d}/user.sock level user\n{}",
        layout.proxies(),
        d = dir.display()
    )
}

/// One HAProxy instance (master-worker or a single process); ended by pid on drop.
pub struct Haproxy {
    pub dir: PathBuf,
    pub child: Child,
    pub master_worker: bool,
    /// Started with a master CLI (`-S`).
    pub master_cli: bool,
    /// The command HAProxy was started through, if any.
    pub wrapped: Vec<String>,
}

pub fn scratch_dir() -> PathBuf {
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
    pub fn start_with(
        master_worker: bool,
        master_cli: bool,
        layout: &(impl Layout + ?Sized),
        wrap: &[&str],
    ) -> Haproxy {
        let dir = scratch_dir();
        fs::write(dir.join("haproxy.cfg"), config(&dir, layout)).unwrap();
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

    pub fn start(master_worker: bool, layout: &(impl Layout + ?Sized)) -> Haproxy {
        Haproxy::start_with(master_worker, true, layout, &[])
    }

    pub fn sock(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    pub fn api(&self) -> Api {
        Api::new(Endpoint::parse(&self.sock("admin.sock")), Duration::from_secs(2), None).unwrap()
    }

    /// The master's `show proc`, or None while its CLI does not answer.
    pub fn master_procs(&self) -> Option<Vec<parse::ProcEntry>> {
        let api = Api::new(Endpoint::parse(&self.sock("master.sock")), Duration::from_secs(2), None).ok()?;
        parse::parse_proc(&api.command("show proc").ok()?).ok()
    }

    /// HAProxy's own pid of the current worker (what `show info` prints).
    pub fn worker_pid(&self) -> u32 {
        parse::parse_info(&self.api().command("show info").unwrap()).unwrap().pid
    }

    /// The master's pid here: our child, or its haproxy child when started through a wrapper.
    pub fn master_pid(&self) -> u32 {
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
    pub fn pids(&self) -> Vec<u32> {
        let master = self.master_pid();
        let mut pids = vec![master];
        pids.extend(sockkill::procfs::all_pids().into_iter().filter(|&p| {
            sockkill::procfs::parent_pid(p).ok() == Some(master) && sockkill::procfs::command(p) == "haproxy"
        }));
        pids
    }

    /// Reloads with `backends` and waits for the new worker. Returns (old, new) as HAProxy numbers them.
    pub fn reload(&self, layout: &(impl Layout + ?Sized)) -> (u32, u32) {
        assert!(self.master_worker);
        let old = self.worker_pid();
        fs::write(self.dir.join("haproxy.cfg"), config(&self.dir, layout)).unwrap();
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
        // 3.1+ signal the old worker only once the new one is ready, and the
        // new one answers before that: until the old worker has closed its
        // listeners, a new client can still land on it.
        let binds: Vec<SocketAddr> = config(&self.dir, layout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("bind ")?.split_whitespace().next()?.parse().ok())
            .collect();
        let old_host = self.host_pid(old);
        wait_until(Duration::from_secs(10), "the old worker to close its listeners", || {
            let f = Filter {
                states: StateSet::parse_name("listening").unwrap(),
                pids: vec![old_host],
                ..Filter::default()
            };
            sockkill::list(None, f, false).is_ok_and(|v| !v.iter().any(|s| binds.contains(&s.local())))
        });
        (old, new)
    }

    /// Our pid for HAProxy's pid `inner` (they differ when HAProxy has its own pid namespace).
    pub fn host_pid(&self, inner: u32) -> u32 {
        self.pids()
            .into_iter()
            .find(|&p| sockkill::procfs::nspid(p).and_then(|v| v.last().copied()) == Some(inner))
            .unwrap_or(inner)
    }

    /// `backend/server`'s row of `show servers state`, by column name.
    fn state_row(&self, backend: &str, server: &str) -> std::collections::HashMap<String, String> {
        let text = self.api().command("show servers state").expect("show servers state");
        let lines: Vec<&str> = text.lines().collect();
        let header: Vec<&str> = lines[1].trim_start_matches('#').split_whitespace().collect();
        let col = |n: &str| header.iter().position(|h| *h == n).unwrap();
        let row = lines[2..]
            .iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(col("be_name")) == Some(&backend) && f.get(col("srv_name")) == Some(&server));
        let f = row.unwrap_or_else(|| panic!("no {backend}/{server} in {text}"));
        header.iter().zip(f).map(|(h, v)| (h.to_string(), v.to_string())).collect()
    }

    pub fn server_state(&self, backend: &str, server: &str) -> (u32, u32) {
        let r = self.state_row(backend, server);
        (r["srv_op_state"].parse().unwrap(), r["srv_admin_state"].parse().unwrap())
    }

    /// The address and port `show servers state` prints for `backend/server`.
    pub fn printed_addr(&self, backend: &str, server: &str) -> String {
        let r = self.state_row(backend, server);
        format!("{}:{}", r["srv_addr"], r["srv_port"])
    }

    /// `set server BACKEND/SERVER addr IP port PORT`, until HAProxy prints the
    /// new address: 3.0+ apply it a few milliseconds after answering, and a
    /// client connecting before that still goes to the old address.
    pub fn set_addr(&self, backend: &str, server: &str, ip: &str, port: u16) {
        let answer = self.api().command(&format!("set server {backend}/{server} addr {ip} port {port}")).unwrap();
        assert!(answer.contains("changed") || answer.contains("no need"), "set server addr: {answer}");
        let want = format!("{ip}:{port}");
        wait_until(Duration::from_secs(3), &format!("HAProxy to print {want} for {backend}/{server}"), || {
            self.printed_addr(backend, server) == want
        });
    }

    pub fn log(&self) -> String {
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
pub fn std_backends() -> Vec<Backend> {
    vec![be("be", 8000, &[("s1", S1), ("s2", S2)])]
}

pub fn lab(master_worker: bool) -> (TcpListener, TcpListener, Haproxy) {
    let s1 = tag_server(S1, "s1");
    let s2 = tag_server(S2, "s2");
    (s1, s2, Haproxy::start(master_worker, &std_backends()))
}

/// HAProxy's sockets to `server` (any state but LISTEN/TIME-WAIT), from the kernel.
pub fn haproxy_sockets_to(server: &str, pids: &[u32]) -> Vec<TcpSocket> {
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

pub fn clients(front: &str, n: usize) -> (Vec<Client>, Vec<Client>) {
    let all: Vec<Client> = (0..n).map(|_| Client::connect(front)).collect();
    let (s1, s2): (Vec<Client>, Vec<Client>) = all.into_iter().partition(|c| c.server == "s1");
    assert!(!s1.is_empty() && !s2.is_empty(), "roundrobin should use both servers");
    assert!(s2.iter().all(|c| c.server == "s2"));
    (s1, s2)
}

/// No HAProxy socket to `server` exists, now and for `period`.
pub fn assert_none_for(period: Duration, server: &str, h: &Haproxy) {
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
pub fn assert_s1_gone_s2_serving(h: &Haproxy, s1: &mut [Client], s2: &mut [Client]) {
    assert_none_for(Duration::from_secs(2), S1, h);
    for c in s1.iter_mut() {
        wait_until(Duration::from_secs(10), "an s1 client to see its connection end", || c.ended());
    }
    for c in s2.iter_mut() {
        assert_eq!(c.ask().expect("s2 client still served"), "s2");
    }
}

/// `sockkill haproxy --json --socket admin.sock --addr S1 EXTRA`, with `--master-socket` when asked.
pub fn run_addr_s1(h: &Haproxy, master_socket: bool, extra: &[&str]) -> (i32, Value, String) {
    let (admin, master) = (h.sock("admin.sock"), h.sock("master.sock"));
    let mut args = vec!["haproxy", "--json", "--socket", admin.as_str(), "--addr", S1];
    if master_socket {
        args.extend(["--master-socket", master.as_str()]);
    }
    args.extend_from_slice(extra);
    run_json(&args)
}

pub fn run_json(args: &[&str]) -> (i32, Value, String) {
    let out = sockkill_in_netns(args);
    let err = stderr(&out);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !doc.is_null() {
        validate(&doc);
    }
    (code(&out), doc, err)
}

/// A listener at `addr` (IPv4) that never accepts (backlog 0, its one queue
/// slot filled): connections to it sit in SYN-SENT, retransmitting. Keep both
/// halves alive for as long as the hole is needed.
pub fn never_accepting(addr: &str) -> (std::os::fd::OwnedFd, TcpStream) {
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};
    use std::os::fd::AsRawFd;
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
    let at: std::net::SocketAddrV4 = addr.parse().unwrap();
    bind(fd.as_raw_fd(), &SockaddrIn::from(at)).unwrap();
    listen(&fd, Backlog::new(0).unwrap()).unwrap();
    let filler = TcpStream::connect(addr).unwrap();
    (fd, filler)
}

/// `n` clients of the frontend `front` whose streams go to `server` (a
/// [`never_accepting`] hole) and get stuck connecting. Each sends a line at
/// once: with request data pending, 3.0 and 3.1 do not purge the stream on
/// `shutdown sessions` (without it they do). Returns once HAProxy holds
/// SYN-SENT sockets to `server` for (up to 20 of) them.
pub fn stuck_streams(h: &Haproxy, front: &str, server: &str, n: usize) -> Vec<TcpStream> {
    let streams: Vec<TcpStream> = (0..n)
        .map(|_| {
            let mut c = TcpStream::connect(front).unwrap();
            c.write_all(b"who\n").unwrap();
            c
        })
        .collect();
    let pids = h.pids();
    wait_until(Duration::from_secs(10), &format!("SYN-SENT sockets to {server}"), || {
        haproxy_sockets_to(server, &pids).iter().filter(|s| s.state_name() == "SYN-SENT").count() >= n.min(20)
    });
    streams
}

/// HAProxy's streams naming server `srv` (`srv=`), read from `show sess` here
/// (not through sockkill's parser).
pub fn streams_of(h: &Haproxy, srv: &str) -> Vec<String> {
    let text = h.api().command("show sess").expect("show sess");
    let want = format!("srv={srv}");
    text.lines().filter(|l| l.starts_with("0x") && l.split_whitespace().any(|t| t == want)).map(String::from).collect()
}

/// After a run that should have ended every socket of server `srv` (at
/// `at`): the kernel shows none for 2 s, and the run says clean exactly when
/// HAProxy lists no stream of the server any more. Otherwise it exits 1,
/// `ambiguous`, saying what HAProxy still lists: 3.0/3.1 before 3.1.7 keep
/// streams frozen after a forced shut, their server side closed and their
/// client still connected — nothing of the server is left to destroy.
pub fn assert_gone_and_truthful(h: &Haproxy, rc: i32, doc: &serde_json::Value, srv: &str, at: &str) {
    assert_none_for(Duration::from_secs(2), at, h);
    let left = streams_of(h, srv);
    if rc == 0 {
        assert_eq!(doc["verdict"], "clean", "{doc}");
        assert!(left.is_empty(), "clean while HAProxy lists {} streams of {srv}: {left:?}", left.len());
    } else {
        assert_eq!((rc, doc["verdict"].as_str()), (1, Some("ambiguous")), "{doc}");
        assert!(doc["unexplained"].as_str().is_some_and(|w| w.contains("HAProxy still lists")), "{doc}");
        assert!(!left.is_empty(), "ambiguous, but HAProxy lists no stream of {srv}: {doc}");
    }
}
