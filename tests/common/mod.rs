//! The private-network-namespace test harness.
//!
//! Every test that destroys sockets runs its body on a thread that has
//! `unshare(CLONE_NEWNET)`ed (or entered a namespace the test created), and
//! [`assert_not_root_netns`] guards every kill: the machine's own sockets are
//! never at risk. Processes spawned from such a thread inherit its namespace.
#![allow(dead_code)] // each test binary uses a different part

pub use sockkill::testing::farm;
pub mod haproxy;
pub mod http;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sockkill::engine::{Engine, Query};
use sockkill::{Filter, TcpSocket};

#[allow(unused_imports)]
pub use farm::connect_from;

pub const BIN: &str = env!("CARGO_BIN_EXE_sockkill");

fn ino(path: &str) -> std::io::Result<u64> {
    std::fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::ino(&m))
}

/// Panics unless the calling thread is outside the machine's own network namespace:
/// that of pid 1 where /proc lets us see it (some sandboxes hide it), and always
/// that of this test process's main thread, which never leaves the namespace it
/// was started in.
pub fn assert_not_root_netns() {
    let me = ino("/proc/thread-self/ns/net").expect("own netns");
    let main_thread = ino("/proc/self/ns/net").expect("main thread netns");
    assert_ne!(me, main_thread, "refusing to kill: this thread is in the namespace the tests started in");
    if let Ok(root) = ino("/proc/1/ns/net") {
        assert_ne!(me, root, "refusing to kill: this thread is in pid 1's network namespace");
    }
}

/// Panics if the namespace file `path` is the machine's own namespace (for kills aimed from outside).
pub fn assert_ns_not_root(path: &str) {
    let target = ino(path).expect("target netns");
    assert_ne!(target, ino("/proc/self/ns/net").expect("main thread netns"), "{path} is the root namespace");
    if let Ok(root) = ino("/proc/1/ns/net") {
        assert_ne!(target, root, "{path} is pid 1's namespace");
    }
}

/// What a test needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Private network namespaces (root, or root in a user namespace: `unshare -Ur cargo test`).
    Netns,
    /// Real root: `ip netns add` (mounts under /run/netns), other users' processes,
    /// fds in flight beyond RLIMIT_NOFILE (the connection farm), mounts.
    Root,
    /// The per-socket `IP_LOCAL_PORT_RANGE` option (Linux 6.3).
    SocketPortRange,
}

fn has_socket_port_range() -> bool {
    let Ok(s) = TcpListener::bind("127.0.0.1:0").or_else(|_| TcpListener::bind("[::1]:0")) else {
        return false;
    };
    // IP_LOCAL_PORT_RANGE = 51; the value is (high << 16) | low, 0 = the namespace's range.
    let value: u32 = 0;
    // SAFETY: a valid fd and a u32 of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            51,
            &value as *const u32 as *const libc::c_void,
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    rc == 0
}

fn can_unshare_netns() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        std::thread::spawn(|| nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_ok()).join().unwrap_or(false)
    })
}

fn is_real_root() -> bool {
    // Root in the initial user namespace maps the whole uid range onto itself.
    let full_map = std::fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]);
    nix::unistd::geteuid().is_root() && full_map
}

/// Whether the machine gives what `need` asks for. When it does not, the test
/// is skipped with a message — except under CI (`CI=true`), where a lost
/// capability must never turn the run green: there it fails.
pub fn can(need: Need, test: &str) -> bool {
    let ok = match need {
        Need::Netns => can_unshare_netns(),
        Need::Root => is_real_root() && can_unshare_netns(),
        Need::SocketPortRange => has_socket_port_range(),
    };
    if !ok {
        let why = match need {
            Need::Netns => "cannot create a network namespace (run as root, or `unshare -Ur cargo test`)",
            Need::Root => "needs real root (named namespaces, the connection farm's fds in flight, mounts)",
            Need::SocketPortRange => "needs IP_LOCAL_PORT_RANGE (Linux 6.3 or later)",
        };
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{test}: {why}, and CI=true forbids skipping");
        // Straight to stderr: the test harness captures eprintln!, and a skip must be seen.
        let name = std::thread::current().name().map_or(test.to_string(), |n| format!("{test}::{n}"));
        let _ = writeln!(std::io::stderr(), "SKIPPED {name}: {why}");
    }
    ok
}

/// Skips the calling test (returns) unless the machine gives `$need`.
#[macro_export]
macro_rules! require {
    ($need:ident) => {
        if !$crate::common::can($crate::common::Need::$need, module_path!()) {
            return;
        }
    };
}

/// Polls `cond` every 20 ms until it holds; panics after `limit` naming `what`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `read`'s value once it has not changed for three reads 100 ms apart
/// (HAProxy opens and closes connections asynchronously: a count taken once
/// races it); panics after `limit` naming `what`.
#[allow(dead_code)]
pub fn settled<T: PartialEq>(limit: Duration, what: &str, mut read: impl FnMut() -> T) -> T {
    let end = Instant::now() + limit;
    let (mut last, mut same) = (read(), 0);
    while same < 3 {
        assert!(Instant::now() < end, "timed out after {limit:?} waiting for {what} to settle");
        std::thread::sleep(Duration::from_millis(100));
        let now = read();
        if now == last {
            same += 1;
        } else {
            (last, same) = (now, 0);
        }
    }
    last
}

/// Lifts the soft RLIMIT_NOFILE to the hard one (a non-root run starts at 1024).
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    });
}

/// Runs `body` on a thread inside a fresh network namespace with loopback up.
pub fn in_private_netns<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    raise_nofile();
    let handle = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        sockkill::netns::loopback_up().expect("lo up");
        assert_not_root_netns();
        wait_for_ipv6_loopback();
        body()
    });
    match handle.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

fn wait_for_ipv6_loopback() {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if TcpListener::bind("[::1]:0").is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until a TCP connection to `ip` (an address just added in this
/// namespace) completes. The kernel inserts an IPv6 address's local route from
/// a work queue after `ip addr add` returns, `nodad` or not: a bind succeeds
/// while a connect still gets ENETUNREACH (seen in CI), or, with an on-link
/// prefix, sends its SYN out of the interface. The probe connection is reset
/// (SO_LINGER 0), so it leaves no socket behind.
pub fn wait_local_address(ip: std::net::IpAddr, scope_id: u32) {
    let at = match ip {
        std::net::IpAddr::V6(v6) => SocketAddr::V6(std::net::SocketAddrV6::new(v6, 0, 0, scope_id)),
        std::net::IpAddr::V4(v4) => SocketAddr::new(v4.into(), 0),
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = String::new();
    while Instant::now() < deadline {
        match TcpListener::bind(at).and_then(|l| {
            let to = l.local_addr()?;
            let c = TcpStream::connect_timeout(&to, Duration::from_millis(200))?;
            let linger = nix::sys::socket::sockopt::Linger;
            let zero = libc::linger { l_onoff: 1, l_linger: 0 };
            nix::sys::socket::setsockopt(&c, linger, &zero).map_err(io::Error::from)?;
            Ok(())
        }) {
            Ok(()) => return,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{ip} never became reachable in this namespace: {last}");
}

/// An echo server: every accepted connection gets its bytes back.
pub struct Echo {
    pub addr: SocketAddr,
    listener: Arc<TcpListener>,
}

impl Echo {
    pub fn start(bind: &str) -> Echo {
        let listener = Arc::new(TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}")));
        let addr = listener.local_addr().expect("local_addr");
        let l = listener.clone();
        std::thread::spawn(move || {
            while let Ok((mut s, _)) = l.accept() {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 256];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Echo { addr, listener }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        // Wakes the accept loop so its thread ends.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// A client connection, as the application sees it.
pub struct Conn {
    pub stream: TcpStream,
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

impl Conn {
    pub fn open(to: SocketAddr) -> Conn {
        let stream = TcpStream::connect(to).unwrap_or_else(|e| panic!("connect {to}: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let local = stream.local_addr().expect("local");
        let mut c = Conn { stream, local, peer: to };
        assert!(c.talks().is_ok(), "fresh connection to {to} does not echo");
        c
    }

    /// Sends a line and reads the echo back.
    pub fn talks(&mut self) -> io::Result<()> {
        self.stream.write_all(b"ping\n")?;
        let mut buf = [0u8; 5];
        self.stream.read_exact(&mut buf)?;
        if &buf == b"ping\n" {
            Ok(())
        } else {
            Err(io::Error::other("wrong echo"))
        }
    }

    /// How the connection ended: the errno of a read (ECONNABORTED when our
    /// socket was destroyed, ECONNRESET when the peer's was), 0 for EOF,
    /// `None` when it is still open.
    pub fn ended(&mut self) -> Option<i32> {
        self.stream.set_read_timeout(Some(Duration::from_millis(500))).ok();
        let mut b = [0u8; 16];
        let r = self.stream.read(&mut b);
        self.stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
        match r {
            Ok(0) => Some(0),
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => None,
            Err(e) => Some(e.raw_os_error().unwrap_or(-1)),
        }
    }

    /// Asserts the application saw its connection aborted or reset.
    pub fn assert_killed(&mut self) {
        match self.ended() {
            Some(libc::ECONNABORTED) | Some(libc::ECONNRESET) => {}
            other => panic!("connection {} -> {} not aborted: read gave {other:?}", self.local, self.peer),
        }
    }

    pub fn assert_alive(&mut self) {
        if let Err(e) = self.talks() {
            panic!("connection {} -> {} should still talk: {e}", self.local, self.peer);
        }
    }
}

/// Runs the sockkill binary (in the calling thread's namespace).
pub fn sockkill(args: &[&str]) -> Output {
    Command::new(BIN).args(args).stdin(Stdio::null()).output().expect("run sockkill")
}

/// Runs sockkill (any subcommand) after asserting this thread is not in the
/// machine's own network namespace: every run that may destroy goes through here.
pub fn sockkill_in_netns(args: &[&str]) -> Output {
    assert_not_root_netns();
    sockkill(args)
}

/// The JSON document sockkill printed, checked against docs/sockkill.schema.json.
pub fn json(out: &Output) -> serde_json::Value {
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("bad JSON ({e}): {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), stderr(out))
    });
    validate(&doc);
    doc
}

/// Panics unless `doc` is valid under the published schema (docs/sockkill.schema.json).
pub fn validate(doc: &serde_json::Value) {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    let v = SCHEMA.get_or_init(|| {
        let schema = serde_json::from_str(include_str!("../../docs/sockkill.schema.json")).expect("the schema parses");
        jsonschema::validator_for(&schema).expect("the schema compiles")
    });
    let errors: Vec<String> = v.iter_errors(doc).map(|e| format!("{e} (at {})", e.instance_path())).collect();
    assert!(errors.is_empty(), "the document does not match docs/sockkill.schema.json: {errors:#?}\n{doc}");
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// The cookies of the sockets a JSON report lists under `key` (`sockets` for
/// kill, `destroyed` for haproxy) with outcome `destroyed`.
pub fn destroyed_cookies(doc: &serde_json::Value, key: &str) -> std::collections::BTreeSet<u64> {
    destroyed_field(doc, key, "cookie")
}

/// `field` of every entry of `doc[key]` whose outcome is `destroyed`.
pub fn destroyed_field(doc: &serde_json::Value, key: &str, field: &str) -> std::collections::BTreeSet<u64> {
    doc[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {doc}"))
        .iter()
        .filter(|s| s["outcome"] == "destroyed")
        .map(|s| s[field].as_u64().unwrap_or_else(|| panic!("no {field} in {s}")))
        .collect()
}

/// The kernel's view, through our own dump: sockets whose peer is in `dst`.
pub fn dump_dst(dst: &str) -> Vec<TcpSocket> {
    let filter = Filter { dst: vec![sockkill::filter::parse_cidr(dst).expect("cidr")], ..Filter::default() };
    Engine::open(None).expect("engine").collect(&Query::new(filter).expect("query")).expect("dump")
}

/// The kernel's view through `ss` (an independent reader): lines of `ss -Htn <filter...>`.
pub fn ss(filter: &[&str]) -> Vec<String> {
    let out = Command::new("ss").args(["-Htn"]).args(filter).output().expect("run ss");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// A uniquely named `ip netns` namespace, deleted on drop.
pub struct NamedNetns {
    pub name: String,
}

impl NamedNetns {
    pub fn create() -> NamedNetns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("sktest-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let st = Command::new("ip").args(["netns", "add", &name]).status().expect("ip netns add");
        assert!(st.success(), "ip netns add {name}");
        NamedNetns { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `body` on a thread inside this namespace (loopback brought up first).
    pub fn run<T: Send + 'static>(&self, body: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = sockkill::Netns::open(&self.name).expect("open named netns");
        ns.run(move || {
            sockkill::netns::loopback_up().expect("lo up");
            assert_not_root_netns();
            body()
        })
        .expect("run in named netns")
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A child process, killed by pid and reaped on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
