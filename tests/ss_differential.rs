//! Differential test against iproute2's `ss`: on a seeded, reproducible
//! population of real sockets in a private network namespace, `sockkill list
//! --json WORDS` must select exactly the sockets `ss -tnaHe WORDS` prints (by
//! socket cookie), for random state words and random ss EXPRESSIONs built from
//! the population's own addresses, ports, marks and interfaces; and twin
//! namespaces built from one seed must be left with the same sockets after
//! `ss -K WORDS` in one and `sockkill kill WORDS` in the other.
//!
//! Reproduce a failure with the seed it prints: `SOCKKILL_DIFF_SEED=0x... cargo
//! test --test ss_differential`. `SOCKKILL_DIFF_ROUNDS` (populations),
//! `SOCKKILL_DIFF_CASES` (expressions per population) and
//! `SOCKKILL_DIFF_KILLS` (twin kill trials) scale a run. For digging into one:
//! `SOCKKILL_DIFF_PROBE='state all dev lo or autobound;...'` compares these
//! words too in every population and prints both answers, and
//! `SOCKKILL_DIFF_SHELL='ss -tnaHe state all; $SOCKKILL list state all'` runs
//! commands inside each population's namespace (listing only: never kill there).
//!
//! What is deliberately never generated (ss's quirks and refusals, each a
//! documented difference, not something to compare):
//! - IPv4 prefixes whose first octet is 0 (`0.0.0.0/0`, `0.0.0.0`): ss's
//!   user-space matcher compares the raw bits of the socket's address with the
//!   prefix whatever the families, so under `not` an all-zero IPv4 prefix
//!   drops IPv6 sockets whose address starts with zero bits (`::1`, `::`).
//! - IPv6 prefixes shorter than /16, and any IPv6 prefix whose network is the
//!   all-zero address (`::/0`, `[::]`, `::1/16`, `::ffff:10.0.0.1/64`): the
//!   same raw-bit comparison makes them match IPv4 sockets in ss's user-space
//!   pass (`0.0.0.0` always; every IPv4 socket for `::/0`), so `not dst ::/0`
//!   and `not dst [::]` select less in ss than in sockkill (see
//!   `unspecified_v6_prefix_under_not`, ignored: a difference found by this
//!   test, kept for the record).
//! - Host names and service names (sockkill refuses them), numbers with a
//!   leading zero (ss reads octal), IPv6 zones (`fe80::1%sk0`: ss cannot
//!   parse them either; `dev` is used instead), `dst != X` (ss: syntax error,
//!   sockkill: accepted as `not dst X`).
//! - `-4`/`-6` (sockkill's family flags are not ss's: ss -4 also drops mapped
//!   sockets).
//! - SO_MARK on sockets that enter TIME-WAIT: the kernel's filter sees a
//!   TIME-WAIT socket's mark, the dump does not report it (user space sees 0).
//! - A mark whose value has bits outside its mask (`fwmark 17/0xf`): ss
//!   matches nothing, sockkill refuses it ("nothing could match").
//! - `cgroup` paths that are not on the cgroup2 mount (`cgroup /` on a hybrid
//!   hierarchy: ss matches nothing, sockkill refuses it); the test's own
//!   cgroup, by its absolute path on the cgroup2 mount, is generated.
//! - `dev` and `autobound` in one expression: ss 6.1 then sends no bytecode
//!   and `autobound` means only "local port in ip_local_port_range" (see
//!   `dev_turns_autobound_into_a_port_range_check`, ignored: a difference
//!   found by this test, kept for the record).

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::socket::{self as nsock, setsockopt, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};

const DEFAULT_SEED: u64 = 0x5eed_0f55_d1ff_0001;
/// The veth end carrying the population's non-loopback addresses, and its index in a fresh namespace.
const IFACE: &str = "sk0";
const IFACE_INDEX: u32 = 2;
/// `IP_LOCAL_PORT_RANGE` (Linux 6.3): a per-socket ephemeral range. One port
/// wide, it makes an autobound socket's port the seed's choice, so twin
/// namespaces hold the same 4-tuples while the sockets stay autobound.
const IP_LOCAL_PORT_RANGE: libc::c_int = 51;
/// A fresh namespace's `ip_local_port_range`.
const EPHEMERAL: (u16, u16) = (32768, 60999);

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

fn seed() -> u64 {
    env_u64("SOCKKILL_DIFF_SEED").unwrap_or(DEFAULT_SEED)
}

// ---------------------------------------------------------------------------
// A small deterministic generator (xorshift64*, seeded through splitmix64).

#[derive(Clone)]
struct Rng(u64);

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// The stream for one part (`tag`, `n`) of a run: independent of how much the others drew.
    fn new(seed: u64, tag: u64, n: u64) -> Rng {
        Rng(splitmix(seed ^ splitmix(tag.wrapping_mul(0x1000_0000_01b3) ^ n)) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next() % u64::from(hi - lo + 1)) as u32
    }
    fn chance(&mut self, percent: u32) -> bool {
        self.range(0, 99) < percent
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

// ---------------------------------------------------------------------------
// The population: a plan drawn from the seed, then built for real.

/// Addresses of one population (on `sk0` unless loopback).
#[derive(Clone, Debug)]
struct Net {
    a: u8,
    b: u8,
}

impl Net {
    fn v4(&self) -> Vec<Ipv4Addr> {
        let (a, b) = (self.a, self.b);
        vec![
            Ipv4Addr::new(10, a, b, 1),
            Ipv4Addr::new(10, a, b, 2),
            Ipv4Addr::new(10, a, b + 1, 3),
            Ipv4Addr::new(10, a + 1, 7, 9),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(127, 0, 0, 2),
        ]
    }
    fn v6(&self) -> Vec<Ipv6Addr> {
        let (a, b) = (u16::from(self.a), u16::from(self.b));
        vec![
            Ipv6Addr::new(0xfd00, a, b, 0, 0, 0, 0, 1),
            Ipv6Addr::new(0xfd00, a, b, 0, 0, 0, 0, 2),
            Ipv6Addr::new(0xfd00, a, b + 1, 0, 0, 0, 0, 3),
            Ipv6Addr::LOCALHOST,
        ]
    }
    fn link_local(&self) -> Vec<Ipv6Addr> {
        let a = u16::from(self.a);
        vec![Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, a, 1), Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, a, 2)]
    }
    /// Addresses on sk0's subnets that nobody answers for: connections to them stay SYN-SENT.
    fn unreachable4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.a, self.b, 99)
    }
    fn unreachable6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, u16::from(self.a), u16::from(self.b), 0, 0, 0, 0, 0x99)
    }
    fn setup(&self) -> String {
        let mut s = format!(
            "link add sk1 type veth peer name {IFACE}\nlink set {IFACE} addrgenmode none\nlink set sk1 addrgenmode none\n\
             link set {IFACE} up\nlink set sk1 up\naddr add 127.0.0.2/8 dev lo\n"
        );
        for v4 in self.v4().iter().take(4) {
            s += &format!("addr add {v4}/24 dev {IFACE}\n");
        }
        for v6 in self.v6().iter().take(3).chain(self.link_local().iter()) {
            s += &format!("addr add {v6}/64 dev {IFACE} nodad\n");
        }
        s += &format!("neigh add {} lladdr 02:00:00:00:00:99 dev {IFACE} nud permanent\n", self.unreachable4());
        s += &format!("neigh add {} lladdr 02:00:00:00:00:99 dev {IFACE} nud permanent\n", self.unreachable6());
        s
    }
}

/// Where a listener is bound.
#[derive(Clone, Debug)]
enum Bind {
    Addr(IpAddr),
    AnyV4,
    /// `[::]`, dual-stack unless v6only.
    AnyV6 {
        v6only: bool,
    },
    /// A link-local address on sk0 (scope id = sk0).
    LinkLocal(Ipv6Addr),
}

#[derive(Clone, Debug)]
struct ListenerPlan {
    bind: Bind,
    port: u16,
    /// No bind(): listen() picks the port (from the one-port per-socket range).
    auto: bool,
    mark: Option<u32>,
    /// TCP_DEFER_ACCEPT: its connections stay SYN-RECV on the server side.
    defer: bool,
    /// SO_BINDTODEVICE after listen().
    dev: Option<&'static str>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    Established,
    /// The client shuts down writing: client FIN-WAIT-2, server CLOSE-WAIT.
    ClientHalf,
    /// The server shuts down writing: server FIN-WAIT-2, client CLOSE-WAIT.
    ServerHalf,
    /// The client closes first, then the server: the client is left in TIME-WAIT.
    TimeWait,
    /// To a TCP_DEFER_ACCEPT listener, never accepted: server SYN-RECV, client ESTABLISHED.
    SynRecv,
    /// To an address nobody answers for: SYN-SENT.
    SynSent,
}

#[derive(Clone, Debug)]
struct ConnPlan {
    /// The listener's index (None for SYN-SENT).
    listener: Option<usize>,
    to: SocketAddr,
    /// Explicit bind; None: autobound (port `auto_port`).
    from: Option<SocketAddr>,
    auto_port: u16,
    client_mark: Option<u32>,
    server_mark: Option<u32>,
    client_dev: Option<&'static str>,
    end: End,
}

#[derive(Clone, Debug)]
struct Plan {
    net: Net,
    listeners: Vec<ListenerPlan>,
    conns: Vec<ConnPlan>,
    marks: Vec<u32>,
    ports: Vec<u16>,
}

const MARKS: [u32; 8] = [0x1, 0x10, 0x11, 0x1f, 0x20, 0x100, 0x7, 0xdead];

struct Ports(BTreeSet<u16>);

impl Ports {
    fn fresh(&mut self, rng: &mut Rng, ephemeral: bool) -> u16 {
        loop {
            let p = if ephemeral {
                rng.range(u32::from(EPHEMERAL.0), u32::from(EPHEMERAL.1)) as u16
            } else {
                match rng.below(5) {
                    0 => *rng.pick(&[22, 80, 443, 1000, 1023, 1024, 1025, 8080, 32767, 32768, 60999, 61000]),
                    1 => rng.range(1, 1023) as u16,
                    2 => rng.range(1024, 32767) as u16,
                    3 => rng.range(u32::from(EPHEMERAL.0), u32::from(EPHEMERAL.1)) as u16,
                    _ => rng.range(61000, 65535) as u16,
                }
            };
            if self.0.insert(p) {
                return p;
            }
        }
    }
}

impl Plan {
    fn generate(rng: &mut Rng) -> Plan {
        let net = Net { a: rng.range(1, 250) as u8, b: rng.range(0, 250) as u8 };
        let mut ports = Ports(BTreeSet::new());
        let marks: Vec<u32> = (0..3).map(|_| *rng.pick(&MARKS)).collect();
        let v4 = net.v4();
        let v6 = net.v6();
        let ll = net.link_local();
        let mut listeners = Vec::new();
        let n_listeners = rng.range(5, 8) as usize;
        for i in 0..n_listeners {
            // The first two: a TCP_DEFER_ACCEPT one (SYN-RECV) and a link-local one.
            let bind = match (i, rng.below(7)) {
                (1, _) => Bind::LinkLocal(*rng.pick(&ll)),
                (_, 0) => Bind::AnyV4,
                (_, 1) => Bind::AnyV6 { v6only: false },
                (_, 2) => Bind::AnyV6 { v6only: true },
                (_, 3 | 4) => Bind::Addr(IpAddr::V4(*rng.pick(&v4))),
                (_, 5) => Bind::Addr(IpAddr::V6(*rng.pick(&v6))),
                _ => Bind::LinkLocal(*rng.pick(&ll)),
            };
            let auto = matches!(bind, Bind::AnyV4 | Bind::AnyV6 { v6only: false }) && rng.chance(50);
            let port = ports.fresh(rng, auto);
            listeners.push(ListenerPlan {
                bind,
                port,
                auto,
                mark: rng.chance(30).then(|| *rng.pick(&marks)),
                defer: i == 0 || rng.chance(10),
                dev: (i > 1 && rng.chance(15)).then(|| *rng.pick(&["lo", IFACE])),
            });
        }
        let mut conns = Vec::new();
        let n_conns = rng.range(12, 20) as usize;
        for _ in 0..n_conns {
            let li = rng.below(listeners.len());
            let l = &listeners[li];
            // The destination (the client socket is IPv6 when it is).
            let dst: IpAddr = match &l.bind {
                Bind::Addr(IpAddr::V4(a)) => {
                    if rng.chance(25) {
                        IpAddr::V6(a.to_ipv6_mapped())
                    } else {
                        IpAddr::V4(*a)
                    }
                }
                Bind::Addr(a @ IpAddr::V6(_)) => *a,
                Bind::AnyV4 => IpAddr::V4(*rng.pick(&v4)),
                Bind::AnyV6 { v6only } => match rng.below(3) {
                    0 if !v6only => IpAddr::V4(*rng.pick(&v4)),
                    1 if !v6only => IpAddr::V6(rng.pick(&v4).to_ipv6_mapped()),
                    _ => IpAddr::V6(*rng.pick(&v6)),
                },
                Bind::LinkLocal(a) => IpAddr::V6(*a),
            };
            let to = sockaddr(dst, l.port, matches!(l.bind, Bind::LinkLocal(_)));
            let auto = rng.chance(35);
            let auto_port = ports.fresh(rng, true);
            let from = (!auto).then(|| {
                let src: IpAddr = if matches!(l.bind, Bind::LinkLocal(_)) {
                    IpAddr::V6(*rng.pick(&ll))
                } else if d_is_loopback(dst) {
                    loopback_source(rng, dst)
                } else {
                    match dst {
                        IpAddr::V4(_) => IpAddr::V4(*rng.pick(&v4[..4])),
                        IpAddr::V6(d) if d.to_ipv4_mapped().is_some() => {
                            IpAddr::V6(rng.pick(&v4[..4]).to_ipv6_mapped())
                        }
                        IpAddr::V6(_) => IpAddr::V6(*rng.pick(&v6[..3])),
                    }
                };
                sockaddr(src, ports.fresh(rng, false), matches!(l.bind, Bind::LinkLocal(_)))
            });
            let end = if l.defer {
                End::SynRecv
            } else {
                *rng.pick(&[End::Established, End::Established, End::ClientHalf, End::ServerHalf, End::TimeWait])
            };
            let marks_ok = end != End::TimeWait;
            conns.push(ConnPlan {
                listener: Some(li),
                to,
                from,
                auto_port,
                client_mark: (marks_ok && rng.chance(30)).then(|| *rng.pick(&marks)),
                server_mark: (marks_ok && end != End::SynRecv && rng.chance(20)).then(|| *rng.pick(&marks)),
                client_dev: (rng.chance(15) && !matches!(l.bind, Bind::LinkLocal(_))).then(|| {
                    if d_is_loopback(dst) {
                        "lo"
                    } else {
                        IFACE
                    }
                }),
                end,
            });
        }
        for _ in 0..rng.range(2, 4) {
            let port = *rng.pick(&[80, 443, 8443, 22]);
            let (to, from_ip): (SocketAddr, IpAddr) = match rng.below(3) {
                0 => (SocketAddr::new(IpAddr::V4(net.unreachable4()), port), IpAddr::V4(*rng.pick(&v4[..3]))),
                1 => (
                    SocketAddr::new(IpAddr::V6(net.unreachable4().to_ipv6_mapped()), port),
                    IpAddr::V6(rng.pick(&v4[..3]).to_ipv6_mapped()),
                ),
                _ => (SocketAddr::new(IpAddr::V6(net.unreachable6()), port), IpAddr::V6(*rng.pick(&v6[..3]))),
            };
            let auto = rng.chance(40);
            let auto_port = ports.fresh(rng, true);
            let from = (!auto).then(|| SocketAddr::new(from_ip, ports.fresh(rng, false)));
            conns.push(ConnPlan {
                listener: None,
                to,
                from,
                auto_port,
                client_mark: rng.chance(30).then(|| *rng.pick(&marks)),
                server_mark: None,
                client_dev: rng.chance(25).then_some(IFACE),
                end: End::SynSent,
            });
        }
        Plan { net, listeners, conns, marks, ports: ports.0.into_iter().collect() }
    }
}

/// Whether the destination is a loopback address (then the client's source is one too).
fn d_is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|m| m.is_loopback()),
    }
}

fn loopback_source(rng: &mut Rng, dst: IpAddr) -> IpAddr {
    let v4 = *rng.pick(&[Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)]);
    match dst {
        IpAddr::V4(_) => IpAddr::V4(v4),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => IpAddr::V6(v4.to_ipv6_mapped()),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

fn sockaddr(ip: IpAddr, port: u16, link_local: bool) -> SocketAddr {
    match ip {
        IpAddr::V6(a) if link_local => SocketAddr::V6(SocketAddrV6::new(a, port, 0, IFACE_INDEX)),
        _ => SocketAddr::new(ip, port),
    }
}

// ---------------------------------------------------------------------------
// Building it.

fn socket(v6: bool, nonblock: bool) -> OwnedFd {
    let family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    let mut flags = SockFlag::SOCK_CLOEXEC;
    if nonblock {
        flags |= SockFlag::SOCK_NONBLOCK;
    }
    nsock::socket(family, SockType::Stream, flags, None).expect("socket")
}

fn set_int(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: u32, what: &str) {
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &value as *const u32 as *const libc::c_void,
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt {what}: {}", std::io::Error::last_os_error());
}

fn one_port_range(fd: &OwnedFd, port: u16) {
    set_int(
        fd,
        libc::IPPROTO_IP,
        IP_LOCAL_PORT_RANGE,
        (u32::from(port) << 16) | u32::from(port),
        "IP_LOCAL_PORT_RANGE",
    );
}

fn bind_dev(fd: &OwnedFd, dev: &str) {
    setsockopt(fd, sockopt::BindToDevice, &OsString::from(dev))
        .unwrap_or_else(|e| panic!("SO_BINDTODEVICE {dev}: {e}"));
}

fn local_port(fd: &OwnedFd) -> u16 {
    let a: SockaddrStorage = nsock::getsockname(fd.as_raw_fd()).expect("getsockname");
    a.as_sockaddr_in().map(|s| s.port()).or_else(|| a.as_sockaddr_in6().map(|s| s.port())).expect("inet")
}

/// The sockets of a built population (they live as long as this).
struct Population {
    _fds: Vec<OwnedFd>,
}

fn ip_batch(script: &str) {
    let mut child = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ip");
    child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("write ip script");
    let out = child.wait_with_output().expect("ip");
    assert!(out.status.success(), "ip -batch failed: {}\n{script}", stderr(&out));
}

/// Builds `plan` in the calling thread's (private) namespace.
fn build(plan: &Plan) -> Population {
    assert_not_root_netns();
    ip_batch(&plan.net.setup());
    // A veth pair's peer is made first: sk0 is 2 (its scope id in the plan's link-local addresses).
    assert_eq!(nix::net::if_::if_nametoindex(IFACE).expect("sk0"), IFACE_INDEX, "{IFACE}'s index");
    for v6 in plan.net.v6().iter().take(3) {
        common::wait_local_address(IpAddr::V6(*v6), 0);
    }
    for ll in plan.net.link_local() {
        common::wait_local_address(IpAddr::V6(ll), IFACE_INDEX);
    }
    let mut fds = Vec::new();
    let mut listeners = Vec::new();
    for l in &plan.listeners {
        let v6 = !matches!(l.bind, Bind::AnyV4 | Bind::Addr(IpAddr::V4(_)));
        let fd = socket(v6, false);
        setsockopt(&fd, sockopt::ReuseAddr, &true).expect("SO_REUSEADDR");
        if let Bind::AnyV6 { v6only } = l.bind {
            setsockopt(&fd, sockopt::Ipv6V6Only, &v6only).expect("IPV6_V6ONLY");
        }
        if let Some(m) = l.mark {
            setsockopt(&fd, sockopt::Mark, &m).expect("SO_MARK");
        }
        if l.defer {
            set_int(&fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, 30, "TCP_DEFER_ACCEPT");
        }
        if l.auto {
            one_port_range(&fd, l.port);
        } else {
            let addr = match &l.bind {
                Bind::Addr(a) => SocketAddr::new(*a, l.port),
                Bind::AnyV4 => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), l.port),
                Bind::AnyV6 { .. } => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), l.port),
                Bind::LinkLocal(a) => sockaddr(IpAddr::V6(*a), l.port, true),
            };
            nsock::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        }
        nsock::listen(&fd, nsock::Backlog::new(64).expect("backlog")).expect("listen");
        assert_eq!(local_port(&fd), l.port, "listener {l:?}");
        listeners.push(fd);
    }
    for c in &plan.conns {
        let v6 = c.to.is_ipv6();
        let syn_sent = c.end == End::SynSent;
        let fd = socket(v6, syn_sent);
        if let Some(m) = c.client_mark {
            setsockopt(&fd, sockopt::Mark, &m).expect("SO_MARK");
        }
        match c.from {
            Some(from) => {
                setsockopt(&fd, sockopt::ReuseAddr, &true).expect("SO_REUSEADDR");
                nsock::bind(fd.as_raw_fd(), &SockaddrStorage::from(from))
                    .unwrap_or_else(|e| panic!("bind {from} for {c:?}: {e}"));
            }
            None => one_port_range(&fd, c.auto_port),
        }
        match nsock::connect(fd.as_raw_fd(), &SockaddrStorage::from(c.to)) {
            Ok(()) => {}
            Err(nix::errno::Errno::EINPROGRESS) if syn_sent => {}
            Err(e) => panic!("connect {c:?}: {e}"),
        }
        if let Some(dev) = c.client_dev {
            bind_dev(&fd, dev);
        }
        let server = match (c.listener, c.end) {
            (Some(li), End::Established | End::ClientHalf | End::ServerHalf | End::TimeWait) => {
                let s = nsock::accept(&listeners[li]).unwrap_or_else(|e| panic!("accept {c:?}: {e}"));
                if let Some(m) = c.server_mark {
                    setsockopt(&s, sockopt::Mark, &m).expect("SO_MARK");
                }
                Some(s)
            }
            _ => None,
        };
        match (c.end, server) {
            (End::ClientHalf, Some(s)) => {
                nsock::shutdown(fd.as_raw_fd(), nsock::Shutdown::Write).expect("shutdown");
                fds.extend([fd, s]);
            }
            (End::ServerHalf, Some(s)) => {
                nsock::shutdown(s.as_raw_fd(), nsock::Shutdown::Write).expect("shutdown");
                fds.extend([fd, s]);
            }
            (End::TimeWait, Some(s)) => {
                drop(fd);
                setsockopt(&s, sockopt::ReceiveTimeout, &nix::sys::time::TimeVal::new(2, 0)).expect("timeout");
                let mut b = [0u8; 8];
                let n = nix::unistd::read(&s, &mut b).expect("read the client's FIN");
                assert_eq!(n, 0, "EOF");
                drop(s);
            }
            (_, s) => {
                fds.push(fd);
                fds.extend(s);
            }
        }
    }
    for (l, fd) in plan.listeners.iter().zip(listeners) {
        if let Some(dev) = l.dev {
            bind_dev(&fd, dev);
        }
        fds.push(fd);
    }
    settle();
    Population { _fds: fds }
}

/// What the namespace holds, as ss shows it: (state, local, peer), sorted.
fn canon() -> Vec<(String, String, String)> {
    let out = Command::new("ss").args(["-tnaH", "state", "all"]).output().expect("run ss");
    assert!(out.status.success(), "ss: {}", stderr(&out));
    let mut v: Vec<_> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[0].to_string(), w[3].to_string(), w[4].to_string())
        })
        .collect();
    v.sort();
    v
}

/// Waits until no socket is in a passing state (FIN-WAIT-1, LAST-ACK, CLOSING)
/// and two looks 50 ms apart agree.
fn settle() -> Vec<(String, String, String)> {
    let end = Instant::now() + Duration::from_secs(3);
    let mut last = canon();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = canon();
        let passing = now.iter().any(|(s, _, _)| matches!(s.as_str(), "FIN-WAIT-1" | "LAST-ACK" | "CLOSING"));
        if now == last && !passing {
            return now;
        }
        assert!(Instant::now() < end, "the population does not settle: {now:#?}");
        last = now;
    }
}

// ---------------------------------------------------------------------------
// Filters: state words and expressions over the plan's facts.

/// ss's state bits (misc/ss.c's SS_* order) and groups, to keep the sets non-empty.
const STATES: [&str; 11] = [
    "established",
    "syn-sent",
    "syn-recv",
    "fin-wait-1",
    "fin-wait-2",
    "time-wait",
    "closed",
    "close-wait",
    "last-ack",
    "listening",
    "closing",
];
const GROUPS: [&str; 5] = ["all", "connected", "synchronized", "bucket", "big"];

fn state_bits(name: &str) -> u32 {
    let all = (1 << STATES.len()) - 1;
    let bit = |n: &str| 1u32 << STATES.iter().position(|s| *s == n).expect("state");
    match name {
        "all" => all,
        "connected" => all & !bit("listening") & !bit("closed"),
        "synchronized" => all & !bit("listening") & !bit("closed") & !bit("syn-sent"),
        "bucket" => bit("syn-recv") | bit("time-wait"),
        "big" => all & !bit("syn-recv") & !bit("time-wait"),
        n => bit(n),
    }
}

/// `state ...`/`exclude ...` words leaving a non-empty set (ss and sockkill
/// start from different defaults, so a case always says).
fn gen_states(rng: &mut Rng) -> Vec<String> {
    loop {
        let mut words = Vec::new();
        let mut set: Option<u32> = None;
        let n = rng.range(1, 3);
        let form = rng.below(10);
        for i in 0..n {
            let exclude = match form {
                0..=2 => false,
                3..=5 => i > 0,
                6 | 7 => true,
                _ => rng.chance(50),
            };
            let name = if rng.chance(if exclude { 15 } else { 30 }) { *rng.pick(&GROUPS) } else { *rng.pick(&STATES) };
            let base = set.unwrap_or(if exclude { state_bits("all") } else { 0 });
            set = Some(if exclude { base & !state_bits(name) } else { base | state_bits(name) });
            words.push(if exclude { "exclude" } else { "state" }.to_string());
            words.push(name.to_string());
        }
        // Something other than `closed` (no socket in a table is ever CLOSED).
        if set.unwrap_or(0) & !state_bits("closed") != 0 {
            return words;
        }
    }
}

/// What expressions are made of: the population's own values.
struct Facts {
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
    ports: Vec<u16>,
    marks: Vec<u32>,
    /// The test's own cgroup v2 directory (every socket here is in it), when there is a cgroup2 mount.
    cgroups: Vec<String>,
}

/// The calling process's cgroup v2 directory, as an absolute path on the cgroup2 mount.
fn own_cgroup() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mount = mounts.lines().map(|l| l.split(' ').collect::<Vec<_>>()).find(|f| f.len() > 2 && f[2] == "cgroup2")?[1]
        .to_string();
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(format!("{}{}", mount.trim_end_matches('/'), if path == "/" { "" } else { path }))
}

impl Facts {
    fn of(plan: &Plan) -> Facts {
        let mut v4 = plan.net.v4();
        v4.push(plan.net.unreachable4());
        let mut v6 = plan.net.v6();
        v6.extend(plan.net.link_local());
        v6.push(plan.net.unreachable6());
        v6.extend(v4.iter().take(5).map(|a| a.to_ipv6_mapped()));
        Facts {
            v4,
            v6,
            ports: plan.ports.clone(),
            marks: plan.marks.clone(),
            cgroups: own_cgroup().into_iter().collect(),
        }
    }
}

#[derive(Debug, Clone)]
enum E {
    Term(Vec<String>),
    Not(Box<E>),
    And(Box<E>, Box<E>),
    Or(Box<E>, Box<E>),
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn gen_port(rng: &mut Rng, f: &Facts) -> u16 {
    match rng.below(10) {
        0 => *rng.pick(&[0, 1, 1023, 1024, 32767, 32768, 60999, 61000, 65535]),
        1 => rng.pick(&f.ports).saturating_add(1),
        2 => rng.pick(&f.ports).saturating_sub(1),
        _ => *rng.pick(&f.ports),
    }
}

fn port_text(rng: &mut Rng, p: u16) -> String {
    if rng.chance(80) {
        format!(":{p}")
    } else {
        p.to_string()
    }
}

fn gen_host(rng: &mut Rng, f: &Facts) -> String {
    let port = match rng.below(10) {
        0..=5 => None,
        6 => Some("*".to_string()),
        _ => Some(gen_port(rng, f).to_string()),
    };
    match rng.below(20) {
        // `*:PORT`
        0 | 1 => format!("*:{}", port.unwrap_or_else(|| gen_port(rng, f).to_string())),
        2..=10 => {
            let a = *rng.pick(&f.v4);
            let len = if rng.chance(45) { 32 } else { rng.range(8, 30) as u8 };
            let shown = if rng.chance(50) {
                IpAddr::V4(ipnet::Ipv4Net::new(a, len).expect("len").network())
            } else {
                IpAddr::V4(a)
            };
            let text = if len == 32 && rng.chance(70) { shown.to_string() } else { format!("{shown}/{len}") };
            match port {
                Some(p) => format!("{text}:{p}"),
                None => text,
            }
        }
        _ => {
            let a = *rng.pick(&f.v6);
            let mapped = a.to_ipv4_mapped().is_some();
            let mut len = if mapped {
                rng.range(104, 128) as u8
            } else {
                *rng.pick(&[16, 32, 48, 64, 64, 64, 96, 112, 120, 128])
            };
            // Never an all-zero network (ss's raw-bit match across families, above).
            if ipnet::Ipv6Net::new(a, len).expect("len").network().is_unspecified() {
                len = 128;
            }
            let shown = if rng.chance(50) { ipnet::Ipv6Net::new(a, len).expect("len").network() } else { a };
            let inner = if len == 128 && rng.chance(60) { shown.to_string() } else { format!("{shown}/{len}") };
            match port {
                None if len < 128 && rng.chance(40) => inner,
                None => format!("[{inner}]"),
                Some(p) => format!("[{inner}]:{p}"),
            }
        }
    }
}

fn gen_term(rng: &mut Rng, f: &Facts) -> Vec<String> {
    let side = |rng: &mut Rng, a: &str, b: &str| if rng.chance(50) { a.to_string() } else { b.to_string() };
    let eq_words = ["", "", "", "=", "==", "eq", "!=", "ne", "neq"];
    match rng.below(20) {
        0..=7 => vec![side(rng, "dst", "src"), gen_host(rng, f)],
        8..=12 => {
            let op = *rng.pick(&[
                "", "=", "==", "eq", "!=", "ne", "neq", ">", "gt", "<", "lt", ">=", "ge", "geq", "<=", "le", "leq",
            ]);
            let mut w = vec![side(rng, "dport", "sport")];
            if !op.is_empty() {
                w.push(op.to_string());
            }
            let p = gen_port(rng, f);
            w.push(port_text(rng, p));
            w
        }
        13 | 14 => {
            let mut w = vec!["dev".to_string()];
            let op = *rng.pick(&eq_words);
            if !op.is_empty() {
                w.push(op.to_string());
            }
            w.push(rng.pick(&["lo", IFACE, "sk1", "1", "2"]).to_string());
            w
        }
        15..=17 => {
            let mut w = vec!["fwmark".to_string()];
            let op = *rng.pick(&eq_words);
            if !op.is_empty() {
                w.push(op.to_string());
            }
            let value = if rng.chance(85) { *rng.pick(&f.marks) } else { 0 };
            let mask = match rng.below(6) {
                0 => Some(0xff),
                1 => Some(0xf0),
                2 => Some(0x0f),
                3 => Some(0xffff_ffff),
                _ => None,
            };
            let num = |rng: &mut Rng, v: u32| if rng.chance(50) { format!("{v:#x}") } else { v.to_string() };
            let value = match mask {
                // The value within the mask: sockkill refuses bits outside it ("nothing could match").
                Some(m) => format!("{}/{}", num(rng, value & m), num(rng, m)),
                None => num(rng, value),
            };
            w.push(value);
            w
        }
        18 if !f.cgroups.is_empty() => {
            let mut w = vec!["cgroup".to_string()];
            let op = *rng.pick(&eq_words);
            if !op.is_empty() {
                w.push(op.to_string());
            }
            w.push(rng.pick(&f.cgroups).clone());
            w
        }
        _ => vec!["autobound".to_string()],
    }
}

fn gen_expr(rng: &mut Rng, f: &Facts, depth: u32) -> E {
    if depth == 0 || rng.chance(35) {
        return E::Term(gen_term(rng, f));
    }
    match rng.below(10) {
        0..=1 => E::Not(Box::new(gen_expr(rng, f, depth - 1))),
        2..=5 => E::And(Box::new(gen_expr(rng, f, depth - 1)), Box::new(gen_expr(rng, f, depth - 1))),
        _ => E::Or(Box::new(gen_expr(rng, f, depth - 1)), Box::new(gen_expr(rng, f, depth - 1))),
    }
}

fn is_binary(e: &E) -> bool {
    matches!(e, E::And(..) | E::Or(..))
}

/// ss's words for `e`, with random spellings: and/or group from the left with
/// equal precedence, so a binary right operand (or `not`'s operand) is
/// parenthesized; a left one sometimes is, redundantly.
fn render(e: &E, rng: &mut Rng, out: &mut Vec<String>) {
    let paren = |e: &E, rng: &mut Rng, out: &mut Vec<String>| {
        out.push("(".into());
        render(e, rng, out);
        out.push(")".into());
    };
    match e {
        E::Term(w) => {
            if rng.chance(5) {
                out.push("(".into());
                out.extend(w.iter().cloned());
                out.push(")".into());
            } else {
                out.extend(w.iter().cloned());
            }
        }
        E::Not(x) => {
            out.push(rng.pick(&["not", "!"]).to_string());
            if is_binary(x) || matches!(**x, E::Not(_)) && rng.chance(50) {
                paren(x, rng, out);
            } else {
                render(x, rng, out);
            }
        }
        E::And(a, b) | E::Or(a, b) => {
            if is_binary(a) && rng.chance(30) {
                paren(a, rng, out);
            } else {
                render(a, rng, out);
            }
            let op = if matches!(e, E::And(..)) {
                *rng.pick(&["and", "and", "&", "&&", ""])
            } else {
                *rng.pick(&["or", "or", "|", "||"])
            };
            if !op.is_empty() {
                out.push(op.to_string());
            }
            if is_binary(b) {
                paren(b, rng, out);
            } else {
                render(b, rng, out);
            }
        }
    }
}

/// A case: state words and an expression (sometimes none).
fn gen_case(rng: &mut Rng, f: &Facts) -> Vec<String> {
    let mut w = gen_states(rng);
    if rng.chance(95) {
        loop {
            let depth = rng.range(0, 4);
            let mut e = Vec::new();
            render(&gen_expr(rng, f, depth), rng, &mut e);
            // Not `dev` and `autobound` in one expression: see `dev_turns_autobound_into_a_port_range_check`.
            if !(e.iter().any(|x| x == "dev") && e.iter().any(|x| x == "autobound")) {
                w.extend(e);
                break;
            }
        }
    }
    w
}

// ---------------------------------------------------------------------------
// The two tools.

/// The cookies of the sockets `ss -tnaHe WORDS` prints (or kills, with -K).
fn ss_cookies(words: &[String], kill: bool) -> Result<BTreeSet<u64>, String> {
    if kill {
        assert_not_root_netns();
    }
    let mut cmd = Command::new("ss");
    cmd.arg("-tnaHe");
    if kill {
        cmd.arg("-K");
    }
    let out = cmd.args(words).stdin(Stdio::null()).output().expect("run ss");
    if !out.status.success() || !out.stderr.is_empty() {
        return Err(format!("ss exit {:?}: {}", out.status.code(), stderr(&out)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("sk:"))
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("no sk: cookie in ss's line {l:?}"))
        })
        .collect()
}

fn sk_cookies(words: &[String]) -> Result<BTreeSet<u64>, String> {
    let args: Vec<&str> = ["list", "--json"].into_iter().chain(words.iter().map(String::as_str)).collect();
    let out = sockkill(&args);
    if code(&out) != 0 {
        return Err(format!("sockkill exit {}: {}", code(&out), stderr(&out)));
    }
    let doc = json(&out);
    Ok(doc["sockets"].as_array().expect("sockets").iter().map(|s| s["cookie"].as_u64().expect("cookie")).collect())
}

/// Every socket of the namespace by cookie, through sockkill: a table row for a failure report.
fn table() -> BTreeMap<u64, String> {
    let out = sockkill(&["list", "--json", "state", "all"]);
    let doc = json(&out);
    doc["sockets"]
        .as_array()
        .expect("sockets")
        .iter()
        .map(|s| {
            let mut row = format!(
                "{:<11} {:<32} {:<32} if={}",
                s["state"].as_str().unwrap_or("?"),
                s["local"].as_str().unwrap_or("?"),
                s["peer"].as_str().unwrap_or("?"),
                s["interface"]
            );
            if let Some(m) = s["mark"].as_u64() {
                row += &format!(" mark={m:#x}");
            }
            (s["cookie"].as_u64().expect("cookie"), row)
        })
        .collect()
}

fn quoted(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if w.is_empty() || w.contains([' ', '(', ')', '!', '|', '&', '<', '>', '*']) {
                format!("'{w}'")
            } else {
                w.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One case: both tools, then the difference (None when they agree).
fn compare(words: &[String]) -> Option<String> {
    let ss = ss_cookies(words, false);
    let sk = sk_cookies(words);
    let (ss, sk) = match (ss, sk) {
        (Ok(a), Ok(b)) if a == b => return None,
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => return Some(format!("a tool failed:\n  ss: {a:?}\n  sockkill: {b:?}")),
    };
    let rows = table();
    let row = |c: &u64| rows.get(c).cloned().unwrap_or_else(|| format!("(cookie {c:#x}, gone)"));
    let mut msg = String::new();
    for c in ss.difference(&sk) {
        msg += &format!("  only ss:       {}\n", row(c));
    }
    for c in sk.difference(&ss) {
        msg += &format!("  only sockkill: {}\n", row(c));
    }
    msg += &format!("  both ({}):\n", ss.intersection(&sk).count());
    for c in ss.intersection(&sk) {
        msg += &format!("                 {}\n", row(c));
    }
    Some(msg)
}

fn population_text(plan: &Plan) -> String {
    let rows = table();
    let mut s =
        format!("net 10.{a}.{b}.0/24 fd00:{a:x}:{b:x}::/64, marks {:?}\n", plan.marks, a = plan.net.a, b = plan.net.b);
    for r in rows.values() {
        s += &format!("    {r}\n");
    }
    s
}

// ---------------------------------------------------------------------------
// The tests.

/// `sockkill list --json WORDS` selects exactly the sockets `ss -tnaHe WORDS`
/// prints, for a few hundred random state words and expressions over
/// populations in every TCP state the kernel keeps.
#[test]
fn list_selects_what_ss_selects() {
    require!(Netns);
    require!(SocketPortRange);
    let seed = seed();
    let rounds = env_u64("SOCKKILL_DIFF_ROUNDS").unwrap_or(8);
    let cases = env_u64("SOCKKILL_DIFF_CASES").unwrap_or(40);
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut compared = 0;
    for round in 0..rounds {
        let (found, n) = in_private_netns(move || {
            let plan = Plan::generate(&mut Rng::new(seed, 1, round));
            let _pop = build(&plan);
            let facts = Facts::of(&plan);
            let mut rng = Rng::new(seed, 2, round);
            let mut found = Vec::new();
            // SOCKKILL_DIFF_SHELL='commands': run in the population's namespace (debugging), output shown.
            if let Ok(script) = std::env::var("SOCKKILL_DIFF_SHELL") {
                let out = Command::new("sh").args(["-c", &script]).env("SOCKKILL", BIN).output().expect("sh");
                eprintln!("round {round} shell:\n{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
            }
            // SOCKKILL_DIFF_PROBE='words;words;...': compare these too, and show both answers.
            for probe in
                std::env::var("SOCKKILL_DIFF_PROBE").unwrap_or_default().split(';').filter(|p| !p.trim().is_empty())
            {
                let w = words(probe);
                let answer =
                    compare(&w).unwrap_or_else(|| format!("  same: {:?}\n", ss_cookies(&w, false).map(|c| c.len())));
                eprintln!("round {round} probe {probe}:\n{answer}");
            }
            for case in 0..cases {
                let w = gen_case(&mut rng, &facts);
                if let Some(diff) = compare(&w) {
                    // A second look: a socket that changed state between the two dumps is not a difference.
                    if compare(&w).is_none() {
                        eprintln!(
                            "seed {seed:#x} round {round} case {case}: differed once, then agreed: {}",
                            quoted(&w)
                        );
                        continue;
                    }
                    found.push(format!("seed {seed:#x} round {round} case {case}\n  words: {}\n{diff}", quoted(&w)));
                }
            }
            if !found.is_empty() {
                found.push(format!("seed {seed:#x} round {round}: the population\n{}", population_text(&plan)));
            }
            (found, cases)
        });
        compared += n;
        failures.extend(found);
    }
    eprintln!("ss_differential: seed {seed:#x}: {compared} cases in {:?}", started.elapsed());
    let n = failures.iter().filter(|f| !f.contains(": the population")).count();
    assert!(failures.is_empty(), "{n} of {compared} cases differ from ss:\n\n{}", failures.join("\n"));
}

/// The outcome of a kill in one of the twin namespaces.
struct Killed {
    before: Vec<(String, String, String)>,
    after: Vec<(String, String, String)>,
    /// What still matches, as ss lists it.
    matching_after: BTreeSet<u64>,
    report: String,
    code: i32,
}

/// Twin namespaces from one seed: `ss -K WORDS` in one, `sockkill kill
/// --allow-catch-all --max 0 WORDS` in the other leave the same sockets; and
/// sockkill's run is clean (exit 0) exactly when nothing matching is left.
#[test]
fn kill_leaves_what_ss_k_leaves() {
    require!(Netns);
    require!(SocketPortRange);
    let seed = seed();
    let trials = env_u64("SOCKKILL_DIFF_KILLS").unwrap_or(24);
    let mut failures = Vec::new();
    for trial in 0..trials {
        let plan = Plan::generate(&mut Rng::new(seed, 3, trial));
        let p = plan.clone();
        let (w, by_ss) = in_private_netns(move || {
            let _pop = build(&p);
            let before = settle();
            // The words: the first two trials take TIME-WAIT and SYN-RECV sockets (`state
            // bucket`) and everything; the others the first of a few random cases that selects
            // some sockets but not all, as ss lists them (the twin is the same population).
            let ww = match trial {
                0 => words("state bucket"),
                1 => words("state all"),
                _ => {
                    let (mut rng, facts) = (Rng::new(seed, 4, trial), Facts::of(&p));
                    let mut pick = gen_case(&mut rng, &facts);
                    for _ in 0..12 {
                        let n = ss_cookies(&pick, false).map_or(0, |c| c.len());
                        if n > 0 && n < before.len() {
                            break;
                        }
                        pick = gen_case(&mut rng, &facts);
                    }
                    pick
                }
            };
            let killed = ss_cookies(&ww, true);
            let after = settle();
            let matching_after = ss_cookies(&ww, false).unwrap_or_default();
            (ww, Killed { before, after, matching_after, report: format!("{killed:?}"), code: 0 })
        });
        let (p, ww) = (plan.clone(), w.clone());
        let by_sk = in_private_netns(move || {
            let _pop = build(&p);
            let before = settle();
            let args: Vec<&str> = ["kill", "--json", "--allow-catch-all", "--max", "0"]
                .into_iter()
                .chain(ww.iter().map(String::as_str))
                .collect();
            let out = sockkill_in_netns(&args);
            let after = settle();
            let matching_after = ss_cookies(&ww, false).unwrap_or_default();
            let doc = serde_json::from_slice::<serde_json::Value>(&out.stdout).map(|d| d["summary"].to_string());
            Killed { before, after, matching_after, report: format!("{doc:?} {}", stderr(&out)), code: code(&out) }
        });
        let head = format!("seed {seed:#x} kill trial {trial}\n  words: {}", quoted(&w));
        eprintln!(
            "kill trial {trial}: {} sockets, {} left by ss -K, {} by sockkill (exit {}); {}",
            by_ss.before.len(),
            by_ss.after.len(),
            by_sk.after.len(),
            by_sk.code,
            quoted(&w)
        );
        if by_ss.before != by_sk.before {
            failures.push(format!(
                "{head}\n  the twin populations differ (harness):\n{:#?}\n{:#?}",
                by_ss.before, by_sk.before
            ));
            continue;
        }
        if by_ss.after != by_sk.after {
            let a: BTreeSet<_> = by_ss.after.iter().collect();
            let b: BTreeSet<_> = by_sk.after.iter().collect();
            let mut msg =
                format!("{head}\n  ss -K: {}\n  sockkill (exit {}): {}\n", by_ss.report, by_sk.code, by_sk.report);
            for s in a.difference(&b) {
                msg += &format!("  survives ss -K only:    {s:?}\n");
            }
            for s in b.difference(&a) {
                msg += &format!("  survives sockkill only: {s:?}\n");
            }
            msg += &format!("  before: {:#?}", by_ss.before);
            failures.push(msg);
            continue;
        }
        // Clean (0) exactly when nothing matching is left; 1 (remaining) only for what ss -K could not kill either.
        let want = if by_sk.matching_after.is_empty() { 0 } else { 1 };
        if by_sk.code != want || (want == 1 && by_ss.matching_after.is_empty()) {
            failures.push(format!(
                "{head}\n  sockkill exit {} (want {want}): {}\n  left matching: ss -K {:?}, sockkill {:?}",
                by_sk.code,
                by_sk.report,
                by_ss.matching_after.len(),
                by_sk.matching_after.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {trials} kill trials differ:\n\n{}", failures.len(), failures.join("\n\n"));
}

/// Found while writing this test (by hand, then excluded from the generator): under `not`, an
/// IPv6 prefix whose network is all zero bits selects less in ss than in
/// sockkill. ss re-checks every socket in user space comparing raw address
/// bits whatever the family (misc/ss.c `run_ssfilter`, a zero-length prefix
/// matching everything), so `::/0` holds every IPv4 socket there and `[::]`
/// holds the IPv4 wildcard listener (0.0.0.0, as `dst` and as `src`; not a
/// listener bound to 127.0.0.1); the kernel's bytecode does neither. ss:
/// `not dst ::/0` lists nothing, `not dst [::]` leaves out the 0.0.0.0
/// listener; sockkill lists every IPv4 socket, and that listener.
#[test]
#[ignore = "a known difference from ss 6.1, kept for the record: see the comment"]
fn unspecified_v6_prefix_under_not() {
    require!(Netns);
    in_private_netns(|| {
        let v4 = Echo::start("0.0.0.0:0");
        let v6 = Echo::start("[::1]:0");
        let to_v4: SocketAddr = format!("127.0.0.1:{}", v4.addr.port()).parse().unwrap();
        let _c = [Conn::open(to_v4), Conn::open(v6.addr)];
        let mut diffs = Vec::new();
        for e in ["not dst ::/0", "not src ::/0", "not dst [::]", "not src [::]"] {
            let w: Vec<String> = ["state", "all"].into_iter().map(String::from).chain(words(e)).collect();
            if let Some(d) = compare(&w) {
                diffs.push(format!("{e}:\n{d}"));
            }
        }
        assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    });
}

/// Found by this test (the default seed, 2 of 320 cases, before `dev` and
/// `autobound` were kept apart in the generator): ss 6.1 sends the
/// kernel no bytecode at all when the expression has a `dev` condition
/// (`ssfilter_bytecompile` gives none for it, and none for an and/or/not
/// around it: the request is 72 bytes, no INET_DIAG_REQ_BYTECODE, seen with
/// strace), so the whole expression is decided by its user-space pass, where
/// `autobound` is only "the local port is within ip_local_port_range". A
/// socket bound explicitly to a port in that range is `autobound` for ss in
/// `dev lo or autobound` but not in `autobound`; sockkill compiles DEV_COND
/// into the kernel's program and keeps the kernel's meaning (no bind lock).
#[test]
#[ignore = "a known difference from ss 6.1, kept for the record: see the comment"]
fn dev_turns_autobound_into_a_port_range_check() {
    require!(Netns);
    in_private_netns(|| {
        // bind(port 0): no bind lock, so the server's sockets are autobound; the client is bound to 40000.
        let server = Echo::start("127.0.0.1:0");
        let client = connect_from("127.0.0.1:40000".parse().unwrap(), server.addr).unwrap();
        let _c = client;
        let mut diffs = Vec::new();
        for e in ["autobound", "dev lo or autobound", "not dev lo and autobound"] {
            let w: Vec<String> = ["state", "established"].into_iter().map(String::from).chain(words(e)).collect();
            if let Some(d) = compare(&w) {
                diffs.push(format!("{e}:\n{d}"));
            }
        }
        assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    });
}

/// The generator (no sockets needed): every word of ss's grammar this test
/// means to cover shows up in a run's worth of cases, and the excluded
/// combinations never do.
#[test]
fn generator_covers_the_grammar() {
    let seed = seed();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for round in 0..8 {
        let plan = Plan::generate(&mut Rng::new(seed, 1, round));
        let facts = Facts::of(&plan);
        let mut rng = Rng::new(seed, 2, round);
        for _ in 0..100 {
            let w = gen_case(&mut rng, &facts);
            assert!(!(w.contains(&"dev".to_string()) && w.contains(&"autobound".to_string())), "{w:?}");
            for x in &w {
                let key = if x.contains(':') && x.contains('[') { "[v6]".to_string() } else { x.clone() };
                *seen.entry(key).or_default() += 1;
            }
        }
    }
    let mut want = vec![
        "state",
        "exclude",
        "dst",
        "src",
        "dport",
        "sport",
        "dev",
        "fwmark",
        "autobound",
        "and",
        "&",
        "&&",
        "or",
        "|",
        "||",
        "not",
        "!",
        "(",
        ")",
        "=",
        "==",
        "eq",
        "!=",
        "ne",
        "neq",
        ">",
        "gt",
        "<",
        "lt",
        ">=",
        "ge",
        "geq",
        "<=",
        "le",
        "leq",
        "[v6]",
        "all",
        "connected",
        "synchronized",
        "bucket",
        "big",
        "established",
        "syn-sent",
        "syn-recv",
        "time-wait",
        "listening",
        "lo",
        IFACE,
        "2",
    ];
    if own_cgroup().is_some() {
        want.push("cgroup");
    }
    let missing: Vec<&&str> = want.iter().filter(|w| !seen.contains_key(**w)).collect();
    assert!(missing.is_empty(), "never generated: {missing:?}");
}
