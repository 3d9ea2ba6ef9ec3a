//! Which sockets a command acts on: typed filter values, their parsing, and the
//! user-side match that re-checks what the kernel's bytecode already filtered.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::Socket;

/// A TCP state as the kernel numbers it (`include/net/tcp_states.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    /// A request socket (incoming handshake not yet accepted); `ss` shows it as SYN-RECV.
    NewSynRecv = 12,
}

impl TcpState {
    const ALL: [TcpState; 12] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
    ];

    /// The state with kernel number `n`, if it is a real TCP state.
    pub fn from_kernel(n: u8) -> Option<TcpState> {
        TcpState::ALL.get(usize::from(n).checked_sub(1)?).copied()
    }

    /// The column name `ss` prints for this state.
    pub fn ss_name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTAB",
            TcpState::SynSent => "SYN-SENT",
            TcpState::SynRecv | TcpState::NewSynRecv => "SYN-RECV",
            TcpState::FinWait1 => "FIN-WAIT-1",
            TcpState::FinWait2 => "FIN-WAIT-2",
            TcpState::TimeWait => "TIME-WAIT",
            TcpState::Close => "UNCONN",
            TcpState::CloseWait => "CLOSE-WAIT",
            TcpState::LastAck => "LAST-ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ss_name())
    }
}

impl Serialize for TcpState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.ss_name())
    }
}

/// A set of TCP states, as the kernel's `idiag_states` bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateSet(u32);

impl StateSet {
    /// Every real TCP state. Not all-ones: bit 13 (TCP_BOUND_INACTIVE, kernel >= 6.8)
    /// makes the kernel walk the bind hash too, doubling the dump for nothing.
    pub const ALL: StateSet = StateSet(0x1FFE);

    /// Every state except LISTEN and TIME-WAIT: the connections a kill is about.
    pub const DEFAULT: StateSet =
        StateSet(Self::ALL.0 & !(1 << TcpState::Listen as u32) & !(1 << TcpState::TimeWait as u32));

    /// The empty set.
    pub const EMPTY: StateSet = StateSet(0);

    /// The raw bit mask.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether `state` is in the set.
    pub fn contains(self, state: TcpState) -> bool {
        self.0 & (1 << state as u32) != 0
    }

    /// The set with `state` added.
    pub fn with(self, state: TcpState) -> StateSet {
        StateSet(self.0 | (1 << state as u32))
    }

    /// The union of two sets.
    pub fn union(self, other: StateSet) -> StateSet {
        StateSet(self.0 | other.0)
    }

    /// Parses one `--state` value with `ss`'s names (`established`, `syn-sent`, ...,
    /// `listening`) and groups (`all`, `connected`, `synchronized`).
    pub fn parse_name(name: &str) -> Result<StateSet> {
        use TcpState::*;
        let one = |s: &[TcpState]| s.iter().fold(StateSet::EMPTY, |acc, s| acc.with(*s));
        let set = match name.to_ascii_lowercase().as_str() {
            "all" => StateSet::ALL,
            "established" | "estab" => one(&[Established]),
            "syn-sent" => one(&[SynSent]),
            "syn-recv" => one(&[SynRecv, NewSynRecv]),
            "fin-wait-1" => one(&[FinWait1]),
            "fin-wait-2" => one(&[FinWait2]),
            "time-wait" => one(&[TimeWait]),
            "closed" | "close" | "unconn" => one(&[Close]),
            "close-wait" => one(&[CloseWait]),
            "last-ack" => one(&[LastAck]),
            "listening" | "listen" => one(&[Listen]),
            "closing" => one(&[Closing]),
            // ss: every state but LISTEN and CLOSED ...
            "connected" => StateSet(StateSet::ALL.0 & !(1 << Listen as u32) & !(1 << Close as u32)),
            // ... and of those, not SYN-SENT / SYN-RECV
            "synchronized" => StateSet(
                StateSet::ALL.0
                    & !(1 << Listen as u32)
                    & !(1 << Close as u32)
                    & !(1 << SynSent as u32)
                    & !(1 << SynRecv as u32)
                    & !(1 << NewSynRecv as u32),
            ),
            _ => {
                return Err(Error::InvalidFilter(format!(
                    "unknown TCP state {name:?} (expected one of: all, connected, synchronized, established, syn-sent, syn-recv, fin-wait-1, fin-wait-2, time-wait, closed, close-wait, last-ack, listening, closing)"
                )))
            }
        };
        Ok(set)
    }

    /// The union of several `--state` values; the default set when `names` is empty.
    pub fn parse_names<S: AsRef<str>>(names: &[S]) -> Result<StateSet> {
        if names.is_empty() {
            return Ok(StateSet::DEFAULT);
        }
        names.iter().try_fold(StateSet::EMPTY, |acc, n| Ok(acc.union(StateSet::parse_name(n.as_ref())?)))
    }
}

/// An inclusive port range (`80` or `8000-8099`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    /// Whether `port` lies in the range.
    pub fn contains(self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let port = |p: &str| {
            p.trim().parse::<u16>().map_err(|_| {
                Error::InvalidFilter(format!("bad port {p:?} in {s:?}: expected a number from 0 to 65535"))
            })
        };
        let range = match s.split_once('-') {
            Some((lo, hi)) => PortRange { lo: port(lo)?, hi: port(hi)? },
            None => {
                let p = port(s)?;
                PortRange { lo: p, hi: p }
            }
        };
        if range.lo > range.hi {
            return Err(Error::InvalidFilter(format!(
                "reversed port range {s:?}: the low port comes first (e.g. {}-{})",
                range.hi, range.lo
            )));
        }
        Ok(range)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Parses a `--dst`/`--src` value: a CIDR, or a bare address meaning /32 or /128.
///
/// Host bits are cleared (`10.0.0.5/24` means `10.0.0.0/24`), and an IPv4-mapped
/// IPv6 prefix (`::ffff:10.0.0.0/120`) becomes the IPv4 prefix it stands for, so
/// that it matches IPv4 and mapped sockets alike.
pub fn parse_cidr(s: &str) -> Result<IpNet> {
    let bad = |why: &str| Error::InvalidFilter(format!("bad address {s:?}: {why}"));
    let net = if s.contains('/') {
        IpNet::from_str(s).map_err(|_| bad("expected an IP address or CIDR like 10.0.0.0/8 or fd00::/64"))?
    } else {
        let ip = IpAddr::from_str(s.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|_| bad("expected an IP address or CIDR like 10.0.0.0/8 or fd00::/64"))?;
        IpNet::from(ip)
    };
    Ok(match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::new(v4, n.prefix_len() - 96).map_err(|_| bad("prefix"))?.trunc()),
            None => IpNet::V6(n.trunc()),
        },
        other => other.trunc(),
    })
}

/// Address family selection (`-4` / `-6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4 addresses, including IPv4-mapped IPv6 sockets.
    V4,
    /// IPv6 addresses that are not IPv4-mapped.
    V6,
}

/// The IPv4 address `ip` stands for, for IPv4 and IPv4-mapped IPv6 addresses.
pub fn as_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

fn net_contains(net: &IpNet, ip: IpAddr) -> bool {
    match net {
        IpNet::V4(n) => as_ipv4(ip).is_some_and(|v4| n.contains(&v4)),
        IpNet::V6(n) => match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().is_none() && n.contains(&v6),
            IpAddr::V4(_) => false,
        },
    }
}

/// Which TCP sockets to act on. Within one field the values are alternatives
/// (OR); across fields every condition must hold (AND). `dst`/`dport` are the
/// peer's address and port, `src`/`sport` the local ones, as in `ss`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Filter {
    pub dst: Vec<IpNet>,
    pub src: Vec<IpNet>,
    pub dport: Vec<PortRange>,
    pub sport: Vec<PortRange>,
    #[serde(serialize_with = "ser_states")]
    pub states: StateSet,
    pub family: Option<Family>,
    /// Only sockets that are an open file descriptor of one of these processes.
    pub pids: Vec<u32>,
}

fn ser_states<S: serde::Serializer>(states: &StateSet, s: S) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut names: Vec<&str> = TcpState::ALL.iter().filter(|st| states.contains(**st)).map(|st| st.ss_name()).collect();
    names.dedup();
    let mut seq = s.serialize_seq(Some(names.len()))?;
    for n in names {
        seq.serialize_element(n)?;
    }
    seq.end()
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            dst: Vec::new(),
            src: Vec::new(),
            dport: Vec::new(),
            sport: Vec::new(),
            states: StateSet::DEFAULT,
            family: None,
            pids: Vec::new(),
        }
    }
}

impl Filter {
    /// Checks the filter for contradictions (e.g. `-4` with an IPv6 `--dst`).
    pub fn validate(&self) -> Result<()> {
        if self.states == StateSet::EMPTY {
            return Err(Error::InvalidFilter("no TCP state selected".into()));
        }
        for (flag, nets) in [("--dst", &self.dst), ("--src", &self.src)] {
            for net in nets {
                match (self.family, net) {
                    (Some(Family::V4), IpNet::V6(_)) => {
                        return Err(Error::InvalidFilter(format!("-4 conflicts with the IPv6 {flag} {net}")))
                    }
                    (Some(Family::V6), IpNet::V4(_)) => {
                        return Err(Error::InvalidFilter(format!(
                            "-6 conflicts with the IPv4 {flag} {net} (IPv4-mapped sockets count as IPv4; use -4)"
                        )))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// True when the filter does not narrow the address space: no `--dst`/`--src`
    /// prefix longer than /0, no port range narrower than 1-65535, no `--pid`.
    /// A kill with such a filter is refused unless explicitly allowed.
    pub fn is_catch_all(&self) -> bool {
        let narrows_nets = |nets: &[IpNet]| !nets.is_empty() && nets.iter().all(|n| n.prefix_len() > 0);
        let narrows_ports = |ranges: &[PortRange]| !ranges.is_empty() && !covers_all_ports(ranges);
        !(narrows_nets(&self.dst)
            || narrows_nets(&self.src)
            || narrows_ports(&self.dport)
            || narrows_ports(&self.sport)
            || !self.pids.is_empty())
    }

    /// Whether `sock` matches every address, port, state and family condition
    /// (the process condition is checked separately, by inode).
    pub fn matches(&self, sock: &Socket) -> bool {
        let any_net = |nets: &[IpNet], ip| nets.is_empty() || nets.iter().any(|n| net_contains(n, ip));
        let any_port = |ranges: &[PortRange], p| ranges.is_empty() || ranges.iter().any(|r| r.contains(p));
        let family_ok = match self.family {
            None => true,
            Some(Family::V4) => as_ipv4(sock.local().ip()).is_some(),
            Some(Family::V6) => as_ipv4(sock.local().ip()).is_none(),
        };
        family_ok
            && sock.state.is_some_and(|s| self.states.contains(s))
            && any_net(&self.dst, sock.peer().ip())
            && any_net(&self.src, sock.local().ip())
            && any_port(&self.dport, sock.peer().port())
            && any_port(&self.sport, sock.local().port())
    }
}

/// Whether the union of `ranges` covers every port from 1 to 65535.
fn covers_all_ports(ranges: &[PortRange]) -> bool {
    let mut sorted = ranges.to_vec();
    sorted.sort_by_key(|r| r.lo);
    let mut next: u32 = 1; // first port not yet covered
    for r in sorted {
        if u32::from(r.lo) > next {
            return false;
        }
        next = next.max(u32::from(r.hi) + 1);
    }
    next > 65535
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn sock(local: &str, peer: &str) -> Socket {
        Socket::for_test(local.parse::<SocketAddr>().unwrap(), peer.parse().unwrap(), TcpState::Established)
    }

    #[test]
    fn parses_ports_and_ranges() {
        assert_eq!("80".parse::<PortRange>().unwrap(), PortRange { lo: 80, hi: 80 });
        assert_eq!("8000-8099".parse::<PortRange>().unwrap(), PortRange { lo: 8000, hi: 8099 });
        for bad in ["", "65536", "-1", "http", "90-80", "1-", "1-2-3"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad:?} should fail");
        }
        let err = "90-80".parse::<PortRange>().unwrap_err().to_string();
        assert!(err.contains("reversed"), "{err}");
    }

    #[test]
    fn parses_cidrs() {
        assert_eq!(parse_cidr("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
        assert_eq!(parse_cidr("10.0.0.5/24").unwrap().to_string(), "10.0.0.0/24");
        assert_eq!(parse_cidr("fd00::1").unwrap().to_string(), "fd00::1/128");
        assert_eq!(parse_cidr("[fd00::1]").unwrap().to_string(), "fd00::1/128");
        assert_eq!(parse_cidr("::ffff:10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(parse_cidr("::ffff:10.1.2.0/120").unwrap().to_string(), "10.1.2.0/24");
        for bad in ["", "10.0.0", "10.0.0.1/33", "fd00::/129", "300.1.1.1", "host.example", "10.0.0.1/-1"] {
            assert!(parse_cidr(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn parses_states() {
        assert_eq!(StateSet::parse_names::<&str>(&[]).unwrap(), StateSet::DEFAULT);
        assert!(!StateSet::DEFAULT.contains(TcpState::Listen));
        assert!(!StateSet::DEFAULT.contains(TcpState::TimeWait));
        assert!(StateSet::DEFAULT.contains(TcpState::SynSent));
        let s = StateSet::parse_names(&["established", "syn-sent"]).unwrap();
        assert!(s.contains(TcpState::Established) && s.contains(TcpState::SynSent));
        assert!(!s.contains(TcpState::FinWait1));
        assert_eq!(StateSet::parse_name("all").unwrap().bits(), 0x1FFE);
        assert!(StateSet::parse_name("establshed").is_err());
    }

    #[test]
    fn matches_ipv4_mapped_sockets() {
        let f = Filter { dst: vec![parse_cidr("10.0.0.0/24").unwrap()], ..Filter::default() };
        assert!(f.matches(&sock("10.0.1.1:1000", "10.0.0.7:80")));
        assert!(f.matches(&sock("[::ffff:10.0.1.1]:1000", "[::ffff:10.0.0.7]:80")));
        assert!(!f.matches(&sock("10.0.1.1:1000", "10.0.1.7:80")));
        assert!(!f.matches(&sock("[fd00::1]:1000", "[fd00::2]:80")));

        let v4 = Filter { family: Some(Family::V4), ..Filter::default() };
        assert!(v4.matches(&sock("[::ffff:10.0.1.1]:1000", "[::ffff:10.0.0.7]:80")));
        assert!(!v4.matches(&sock("[fd00::1]:1000", "[fd00::2]:80")));
        let v6 = Filter { family: Some(Family::V6), ..Filter::default() };
        assert!(!v6.matches(&sock("[::ffff:10.0.1.1]:1000", "[::ffff:10.0.0.7]:80")));
        assert!(v6.matches(&sock("[fd00::1]:1000", "[fd00::2]:80")));

        let six = Filter { dst: vec![parse_cidr("fd00::/64").unwrap()], ..Filter::default() };
        assert!(six.matches(&sock("[fd00::1]:1000", "[fd00::2]:80")));
        assert!(!six.matches(&sock("10.0.1.1:1000", "10.0.0.7:80")));
    }

    #[test]
    fn matches_ports_and_states() {
        let f = Filter {
            dport: vec!["80".parse().unwrap(), "8000-8099".parse().unwrap()],
            sport: vec!["1000-2000".parse().unwrap()],
            ..Filter::default()
        };
        assert!(f.matches(&sock("1.1.1.1:1500", "2.2.2.2:80")));
        assert!(f.matches(&sock("1.1.1.1:1500", "2.2.2.2:8050")));
        assert!(!f.matches(&sock("1.1.1.1:1500", "2.2.2.2:81")));
        assert!(!f.matches(&sock("1.1.1.1:2500", "2.2.2.2:80")));
        let mut listening = sock("1.1.1.1:1500", "2.2.2.2:80");
        listening.state = Some(TcpState::Listen);
        assert!(!f.matches(&listening));
    }

    #[test]
    fn catch_all_detection() {
        let f = |dst: &[&str], dport: &[&str], pids: &[u32]| Filter {
            dst: dst.iter().map(|s| parse_cidr(s).unwrap()).collect(),
            dport: dport.iter().map(|s| s.parse().unwrap()).collect(),
            pids: pids.to_vec(),
            ..Filter::default()
        };
        assert!(f(&[], &[], &[]).is_catch_all());
        assert!(f(&["0.0.0.0/0"], &[], &[]).is_catch_all());
        assert!(f(&["10.0.0.1", "::/0"], &[], &[]).is_catch_all());
        assert!(f(&[], &["1-65535"], &[]).is_catch_all());
        assert!(f(&[], &["0-65535"], &[]).is_catch_all());
        assert!(f(&[], &["1-40000", "40001-65535"], &[]).is_catch_all());
        assert!(!f(&["10.0.0.1"], &[], &[]).is_catch_all());
        assert!(!f(&["0.0.0.0/1"], &[], &[]).is_catch_all());
        assert!(!f(&[], &["80"], &[]).is_catch_all());
        assert!(!f(&[], &["1-65534"], &[]).is_catch_all());
        assert!(!f(&[], &[], &[1]).is_catch_all());
    }

    #[test]
    fn validate_rejects_family_conflicts() {
        let f = Filter { family: Some(Family::V4), dst: vec![parse_cidr("fd00::1").unwrap()], ..Filter::default() };
        assert!(f.validate().is_err());
        let f = Filter { family: Some(Family::V6), src: vec![parse_cidr("10.0.0.1").unwrap()], ..Filter::default() };
        assert!(f.validate().is_err());
        let f =
            Filter { family: Some(Family::V4), dst: vec![parse_cidr("::ffff:10.0.0.1").unwrap()], ..Filter::default() };
        assert!(f.validate().is_ok());
    }
}
