//! Library-level tests against the real kernel, in private network namespaces:
//! what the kernel's bytecode filter returns by itself, and cookie-exact destroys.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};

use common::*;
use nix::sys::socket::{self, sockopt};
use sockkill::diag::{DumpSpec, Outcome, SockDiag};
use sockkill::filter::parse_cidr;
use sockkill::{Filter, StateSet, TcpSocket};

/// What the kernel returns through sockkill's request alone (bytecode and
/// header ports), before any user-side re-check.
fn kernel_dump(filter: &Filter) -> BTreeSet<(String, String)> {
    let mut diag = SockDiag::open().unwrap();
    let query = sockkill::engine::Query::new(filter.clone()).unwrap();
    let mut out = BTreeSet::new();
    for af in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        diag.dump(&query.spec(af), |s| {
            out.insert((s.local().to_string(), s.peer().to_string()));
        })
        .unwrap();
    }
    out
}

/// The kernel alone (bytecode, no user-side re-check) returns exactly what the
/// user-side matcher selects from an unfiltered dump: a wrong op code (4 for
/// D_COND), a wrong jump or a wrong byte order shows up here.
#[test]
fn bytecode_filters_in_the_kernel() {
    require!(Netns);
    in_private_netns(|| {
        let a = Echo::start("127.0.0.2:0");
        let a2 = Echo::start("127.0.0.2:0");
        let b = Echo::start("127.0.0.3:0");
        let v6 = Echo::start("[::1]:0");
        let dual = Echo::start("[::]:0");
        let mapped: SocketAddr = format!("[::ffff:127.0.0.4]:{}", dual.addr.port()).parse().unwrap();
        let _conns: Vec<Conn> =
            [a.addr, a.addr, a2.addr, b.addr, v6.addr, mapped].into_iter().map(Conn::open).collect();
        // A listener bound to an IPv4-mapped address: IPv4 for -4/-6 (its peer is unspecified).
        let _mapped_listener = std::net::TcpListener::bind("[::ffff:127.0.0.5]:0").unwrap();

        let everything = Filter { states: StateSet::ALL, ..Filter::default() };
        let all = kernel_dump(&everything);
        assert!(all.len() >= 17, "{all:?}"); // 6 pairs + 5 listeners

        let f = |dst: &[&str], src: &[&str], dport: &[&str], sport: &[&str]| Filter {
            dst: dst.iter().map(|s| parse_cidr(s).unwrap()).collect(),
            src: src.iter().map(|s| parse_cidr(s).unwrap()).collect(),
            dport: dport.iter().map(|s| s.parse().unwrap()).collect(),
            sport: sport.iter().map(|s| s.parse().unwrap()).collect(),
            states: StateSet::ALL,
            ..Filter::default()
        };
        let pa = a.addr.port().to_string();
        let pb = b.addr.port().to_string();
        let p6 = v6.addr.port().to_string();
        let range = format!("{}-{}", a.addr.port().min(a2.addr.port()), a.addr.port().max(a2.addr.port()));
        let cases = vec![
            f(&["127.0.0.2"], &[], &[], &[]),
            f(&["127.0.0.2", "127.0.0.3"], &[], &[], &[]),
            f(&["127.0.0.0/30"], &[], &[], &[]),
            f(&["127.0.0.4"], &[], &[], &[]),
            f(&["::1"], &[], &[], &[]),
            f(&[], &["127.0.0.2"], &[], &[]),
            f(&[], &[], &[pa.as_str()], &[]),
            f(&[], &[], &[pa.as_str(), pb.as_str()], &[]),
            f(&[], &[], &[range.as_str()], &[]),
            f(&[], &[], &[], &[pa.as_str()]),
            f(&["127.0.0.2"], &[], &[pa.as_str()], &[]),
            f(&["127.0.0.2", "::1"], &["127.0.0.1", "::1"], &[pa.as_str(), p6.as_str()], &[]),
            Filter { family: Some(sockkill::Family::V4), ..f(&[], &[], &[], &[]) },
            Filter { family: Some(sockkill::Family::V6), ..f(&[], &[], &[], &[]) },
            Filter { family: Some(sockkill::Family::V4), ..f(&[], &[], &[pa.as_str()], &[]) },
            Filter { family: Some(sockkill::Family::V6), ..f(&[], &[], &[], &[p6.as_str()]) },
        ];
        for filter in cases {
            let by_kernel = kernel_dump(&filter);
            let mut by_user = BTreeSet::new();
            for af in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
                SockDiag::open()
                    .unwrap()
                    .dump(&DumpSpec::new(af, StateSet::ALL, &[]), |s| {
                        if filter.matches(&s) {
                            by_user.insert((s.local().to_string(), s.peer().to_string()));
                        }
                    })
                    .unwrap();
            }
            assert!(!by_user.is_empty(), "case selects nothing: {filter:?}");
            assert!(by_user.len() < all.len(), "case selects everything: {filter:?}");
            assert_eq!(by_kernel, by_user, "kernel and user-side disagree for {filter:?}");
        }
    });
}

fn abort_close(s: TcpStream) {
    // SO_LINGER 0: close sends RST, leaving no TIME-WAIT on this 4-tuple.
    socket::setsockopt(&s, sockopt::Linger, &libc::linger { l_onoff: 1, l_linger: 0 }).unwrap();
    drop(s);
}

fn find(dst: &str, local: SocketAddr) -> Vec<TcpSocket> {
    dump_dst(dst).into_iter().filter(|s| s.local() == local).collect()
}

/// A socket id from an earlier dump never hits a newer connection on the same 4-tuple.
#[test]
fn stale_cookie_is_already_gone_and_spares_the_new_connection() {
    require!(Netns);
    in_private_netns(|| {
        let up = Echo::start("127.0.0.2:0");
        let local: SocketAddr = "127.0.0.1:40123".parse().unwrap();
        let old = connect_from(local, up.addr).unwrap();
        let mut c = Conn { local, peer: up.addr, stream: old.try_clone().unwrap() };
        c.assert_alive();
        let old_sock = find("127.0.0.2", local).pop().expect("old socket dumped");
        drop(c);
        old.set_nonblocking(true).unwrap();
        abort_close(old);

        // Same 4-tuple, new connection (new cookie).
        let stream = connect_from(local, up.addr).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut new = Conn { local, peer: up.addr, stream };
        new.assert_alive();
        let new_sock = find("127.0.0.2", local).pop().expect("new socket dumped");
        assert_eq!((new_sock.local(), new_sock.peer()), (old_sock.local(), old_sock.peer()));
        assert_ne!(new_sock.cookie(), old_sock.cookie());

        assert_not_root_netns();
        let mut diag = SockDiag::open().unwrap();
        assert_eq!(diag.destroy(&[&old_sock]).unwrap(), vec![Outcome::AlreadyGone]);
        new.assert_alive();

        // Through the engine the stale socket counts as already gone, not failed.
        let mut engine = sockkill::engine::Engine::open(None).unwrap();
        let pass = engine.destroy(&[old_sock], None, None);
        assert!(pass.error.is_none());
        assert_eq!(pass.outcomes, vec![(0, Outcome::AlreadyGone)]);
        new.assert_alive();

        assert_eq!(diag.destroy(&[&new_sock]).unwrap(), vec![Outcome::Destroyed]);
        new.assert_killed();
    });
}

/// Many destroys in one sendmsg, each acknowledged.
#[test]
fn pipelined_destroys_are_all_acknowledged() {
    require!(Netns);
    in_private_netns(|| {
        let up = Echo::start("127.0.0.2:0");
        let conns: Vec<TcpStream> = (0..600).map(|_| TcpStream::connect(up.addr).unwrap()).collect();
        let targets = dump_dst("127.0.0.2");
        assert_eq!(targets.len(), 600);
        assert_not_root_netns();
        let refs: Vec<&TcpSocket> = targets.iter().collect();
        let results = SockDiag::open().unwrap().destroy(&refs).unwrap();
        assert_eq!(results.len(), 600);
        assert!(results.iter().all(|r| *r == Outcome::Destroyed), "{results:?}");
        assert!(dump_dst("127.0.0.2").is_empty());
        drop(conns);
    });
}

/// The sock_diag socket is connected to the kernel: another netlink socket
/// in the namespace that sends to its port id (to forge a DONE or an ack) is
/// refused, while an unconnected socket would have taken the message.
#[test]
fn only_the_kernel_can_talk_to_our_socket() {
    require!(Netns);
    in_private_netns(|| {
        use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NlAddr};
        let ours = SockDiag::open().unwrap();
        let port = ours.port_id().unwrap();
        let mut forger = Socket::new(NETLINK_SOCK_DIAG).unwrap();
        forger.bind_auto().unwrap();
        // An NLMSG_DONE with sequence number 1 (the first dump's).
        let mut done = vec![0u8; 20];
        done[0..4].copy_from_slice(&20u32.to_ne_bytes());
        done[4..6].copy_from_slice(&3u16.to_ne_bytes());
        done[8..12].copy_from_slice(&1u32.to_ne_bytes());
        let err = forger.send_to(&done, &NlAddr::new(port, 0), 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED), "{err}");

        // The same message to a socket that is merely bound is delivered: the
        // connect() is what closes the door.
        let mut open_door = Socket::new(NETLINK_SOCK_DIAG).unwrap();
        let addr = open_door.bind_auto().unwrap();
        assert_eq!(forger.send_to(&done, &NlAddr::new(addr.port_number(), 0), 0).unwrap(), 20);
        drop(ours);
    });
}

/// An SO_REUSEPORT listener group: the kernel's lookup for a destroy reaches
/// one member at a time, so a cookie of another member answers ENOENT while
/// that member lives. The kill keeps passing while passes make progress, each
/// socket is counted once, and the counts add up to what matched.
#[test]
fn reuseport_listener_groups_are_counted_once() {
    require!(Netns);
    in_private_netns(|| {
        let addr: SocketAddr = "127.0.0.3:7070".parse().unwrap();
        let listeners: Vec<std::net::TcpListener> = (0..12)
            .map(|_| {
                let fd = socket::socket(
                    socket::AddressFamily::Inet,
                    socket::SockType::Stream,
                    socket::SockFlag::SOCK_CLOEXEC,
                    None,
                )
                .unwrap();
                socket::setsockopt(&fd, sockopt::ReusePort, &true).unwrap();
                let SocketAddr::V4(a) = addr else { unreachable!() };
                socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &socket::SockaddrIn::from(a)).unwrap();
                socket::listen(&fd, socket::Backlog::new(16).unwrap()).unwrap();
                std::net::TcpListener::from(fd)
            })
            .collect();
        let out =
            sockkill_in_netns(&["kill", "--json", "--state", "listening", "--src", "127.0.0.3", "--sport", "7070"]);
        let doc = json(&out);
        let s = &doc["summary"];
        let matched = s["matched"].as_u64().unwrap();
        assert_eq!(matched, 12, "{s}");
        let sum: u64 = ["destroyed", "already_gone", "not_found", "failed", "unacknowledged"]
            .iter()
            .map(|k| s[*k].as_u64().unwrap())
            .sum();
        assert_eq!(sum, doc["sockets"].as_array().unwrap().len() as u64, "{s}");
        assert!(sum <= matched + s["new_during_kill"].as_u64().unwrap(), "counts exceed what matched: {s}");
        // The kernel's own view: every listener of the group is gone, and the exit code says so.
        let left = sockkill::list(
            None,
            Filter { states: StateSet::parse_name("listening").unwrap(), ..Filter::default() },
            false,
        )
        .unwrap()
        .into_iter()
        .filter(|l| l.local() == addr)
        .count();
        assert_eq!(s["remaining"].as_u64().unwrap() as usize, left, "{s}");
        assert_eq!(code(&out), if left == 0 { 0 } else { 1 }, "{s}\n{}", stderr(&out));
        assert_eq!(left, 0, "passes stopped while they still made progress: {s}");
        // Each socket once, however many passes tried it (which member the kernel's lookup
        // reaches depends on the reuseport hash: usually several passes, sometimes one).
        let cookies: BTreeSet<u64> =
            doc["sockets"].as_array().unwrap().iter().map(|e| e["cookie"].as_u64().unwrap()).collect();
        assert_eq!(cookies.len(), doc["sockets"].as_array().unwrap().len(), "{s}");
        assert_eq!(s["destroyed"], 12, "{s}");
        drop(listeners);
    });
}
