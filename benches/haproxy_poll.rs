//! Benchmark: what one poll of the HAProxy mode costs next to a busy worker.
//!
//! cargo bench --bench haproxy_poll -- [--polls N] [--sizes 1000,9000]
//!
//! In a private network namespace: a real HAProxy (`$SOCKKILL_HAPROXY`, default
//! `haproxy`) whose worker holds N bulk client connections to s2 (2N fds: the
//! hard RLIMIT_NOFILE of 20000 here allows about 9000) and a handful to s1, the
//! server the poll is about. A poll is what `sockkill haproxy` does every 100
//! ms: one kernel-filtered dump of sockets to s1 and their classification
//! (owner and HAProxy attribution, cached). Medians over the polls of
//! (a) a steady poll, (b) a poll that meets a new candidate (a new stream to
//! s1: the worker's fd table from /proc, and one `show fd N` line from
//! HAProxy), and for reference (c) one full read of the worker's fd table —
//! what every poll cost before the owner cache — and (d) one plain `show
//! sess`, what HAProxy builds when asked for its whole stream table.

use std::cell::RefCell;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use sockkill::engine::owners::Holders;
use sockkill::engine::{Classifier, Engine, Query};
use sockkill::filter::parse_cidr;
use sockkill::haproxy::api::{Api, Endpoint};
use sockkill::haproxy::discovery::{Topology, Worker};
use sockkill::haproxy::parse;
use sockkill::haproxy::places::{Place, Places};
use sockkill::haproxy::target::{HaproxyClassifier, Rule, Target};
use sockkill::{Filter, PortRange};

const S1: &str = "127.0.0.11:9001";
const S2: &str = "127.0.0.12:9002";

/// Accepts and holds every connection (a server that never answers), with an
/// accept queue long enough for HAProxy's burst of connects (std's is 128:
/// an overflow leaves HAProxy with connections the server never accepted).
fn hold(addr: &str) -> std::sync::mpsc::Receiver<TcpStream> {
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};
    let a: std::net::SocketAddrV4 = addr.parse().expect("IPv4 address");
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(a)).expect("bind");
    listen(&fd, Backlog::MAXALLOWABLE).expect("listen");
    let l = TcpListener::from(fd);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            if tx.send(s).is_err() {
                break;
            }
        }
    });
    rx
}

/// HAProxy, ended by pid when the size is done — or when the bench panics.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn stats(name: &str, v: &mut [f64]) -> String {
    let m = median(v);
    format!("{name}: median {m:.2} ms (min {:.2}, max {:.2}, n {})", v[0], v[v.len() - 1], v.len())
}

fn one_size(bulk: usize, polls: usize) -> String {
    let dir = std::env::temp_dir().join(format!("sockkill-poll-{}-{bulk}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = format!(
        "global\n    maxconn {}\n    stats socket {d}/admin.sock level admin\n\
         defaults\n    mode tcp\n    timeout connect 30s\n    timeout client 1h\n    timeout server 1h\n\
         frontend fe_bulk\n    bind 127.0.0.10:8000\n    default_backend be_bulk\n\
         backend be_bulk\n    server s2 {S2}\n\
         frontend fe\n    bind 127.0.0.10:8001\n    default_backend be\n\
         backend be\n    server s1 {S1}\n",
        bulk + 200,
        d = dir.display()
    );
    std::fs::write(dir.join("haproxy.cfg"), cfg).unwrap();
    let held_s1 = hold(S1);
    let held_s2 = hold(S2);
    let bin = std::env::var("SOCKKILL_HAPROXY").unwrap_or_else(|_| "haproxy".into());
    // Accept queues long enough for a burst of connects (per namespace).
    let _ = std::fs::write("/proc/sys/net/core/somaxconn", "65535");
    let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
    let haproxy = Command::new(bin)
        .args(["-db", "-f"])
        .arg(dir.join("haproxy.cfg"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start haproxy");
    let haproxy = Running(haproxy);
    let endpoint = Endpoint::parse(&dir.join("admin.sock").to_string_lossy());
    let api = || Api::new(endpoint.clone(), Duration::from_secs(5), None);
    let end = Instant::now() + Duration::from_secs(10);
    while api().and_then(|a| a.command("show info")).is_err() {
        assert!(Instant::now() < end, "HAProxy did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut clients: Vec<TcpStream> = Vec::with_capacity(bulk + 100);
    for _ in 0..bulk {
        clients.push(TcpStream::connect("127.0.0.10:8000").expect("bulk client"));
    }
    for _ in 0..5 {
        clients.push(TcpStream::connect("127.0.0.10:8001").expect("s1 client"));
    }
    // HAProxy connects to the servers as clients arrive; wait for all of it.
    let mut servers: Vec<TcpStream> = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    while servers.len() < bulk + 5 {
        assert!(
            Instant::now() < end,
            "only {} of {} server connections; HAProxy's log:\n{}",
            servers.len(),
            bulk + 5,
            std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default()
        );
        servers.extend(held_s2.try_iter());
        servers.extend(held_s1.try_iter());
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = haproxy.0.id();
    let config = parse::parse_servers_state(&api().unwrap().command("show servers state").unwrap()).unwrap();
    let addr: SocketAddr = S1.parse().unwrap();
    let worker = Worker { pid, inner_pid: pid };
    let topo = Topology {
        answering: worker,
        master: None,
        master_cli: None,
        workers: vec![worker],
        versions: Default::default(),
    };
    let version = parse::parse_info(&api().unwrap().command("show info").unwrap()).unwrap().version;
    let places = Rc::new(RefCell::new(Places::default()));
    places.borrow_mut().add(Place::of(addr));
    let mut classifier = HaproxyClassifier::new(
        Rule::new(Target::Named { backend: "be".into(), server: "s1".into() }, config, vec![8000, 8001]),
        places,
        Holders::new(&[pid]).unwrap(),
        Engine::open(None).unwrap(),
        &topo,
        &version,
        api().unwrap(),
        None,
    );
    let query = Query::new(Filter {
        dst: vec![parse_cidr("127.0.0.11").unwrap()],
        dport: vec![PortRange::one(9001)],
        ..Filter::default()
    })
    .unwrap();
    let mut engine = Engine::open(None).unwrap();
    let mut poll = |classifier: &mut HaproxyClassifier| {
        let t = Instant::now();
        let mut sockets = engine.collect(&query).unwrap();
        let classes = classifier.classify(&mut sockets).unwrap();
        assert_eq!(classes.len(), sockets.len());
        t.elapsed().as_secs_f64() * 1000.0
    };
    poll(&mut classifier); // first look: reads the fd table and the stream table once
    let mut steady: Vec<f64> = (0..polls).map(|_| poll(&mut classifier)).collect();
    let mut fresh = Vec::new();
    for _ in 0..polls {
        clients.push(TcpStream::connect("127.0.0.10:8001").expect("new s1 client"));
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(s) = held_s1.recv_timeout(Duration::from_millis(10)) {
                servers.push(s);
                break;
            }
            assert!(Instant::now() < end, "HAProxy did not connect to s1");
        }
        fresh.push(poll(&mut classifier));
    }
    let mut scans: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            Holders::new(&[pid]).unwrap();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    let mut sess_bytes = 0;
    let mut sess: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            sess_bytes = api().unwrap().command("show sess").unwrap().len();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let line = format!(
        "worker with {bulk} bulk connections ({fds} fds), {} to s1: {}; {}; {}; {} ({sess_bytes} bytes); HAProxy answers the classifier read: {:?}",
        5 + polls,
        stats("(a) steady poll", &mut steady),
        stats("(b) poll meeting a new candidate", &mut fresh),
        stats("(c) one full fd-table read", &mut scans),
        stats("(d) one `show sess`", &mut sess),
        classifier.tables().reads.iter().map(|r| format!("{} x{} ({} bytes)", r.command, r.count, r.bytes)).collect::<Vec<_>>()
    );
    drop(haproxy);
    drop((clients, servers));
    let _ = std::fs::remove_dir_all(&dir);
    line
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("benchmark skipped (not run by `cargo bench`): cargo bench --bench haproxy_poll");
        return;
    }
    if std::env::var_os("RUST_LOG").is_some() {
        // What a poll does, step by step (RUST_LOG=sockkill=debug).
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    }
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let polls: usize = arg("--polls").map_or(30, |p| p.parse().expect("--polls"));
    let sizes: Vec<usize> =
        arg("--sizes").unwrap_or_else(|| "1000,9000".into()).split(',').map(|s| s.parse().expect("size")).collect();
    // Client and server ends of every connection live in this process.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    for size in sizes {
        let line = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            sockkill::netns::loopback_up().expect("lo");
            one_size(size, polls)
        })
        .join()
        .expect("bench thread");
        println!("{line}");
        let _ = std::io::stdout().flush();
    }
}
