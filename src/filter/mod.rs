//! Which sockets a command acts on: typed filter values, their parsing, and the
//! user-side match that re-checks what the kernel's bytecode already filtered.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::socket::TcpSocket;
pub use crate::socket::TcpState;

pub mod expr;
mod parse_expr;

pub use expr::Expr;
pub use parse_expr::{parse_words, Parsed};

/// The `--state` names of single states (groups like `all` aside), in kernel order.
pub fn state_flag_names() -> Vec<&'static str> {
    StateSet::ALL.flag_names_of_states()
}

/// A set of TCP states, as the kernel's `idiag_states` bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

    /// The states of `self` that are not in `other`.
    pub fn minus(self, other: StateSet) -> StateSet {
        StateSet(self.0 & !other.0)
    }

    /// The states in the set, in kernel order.
    pub fn iter(self) -> impl Iterator<Item = TcpState> {
        TcpState::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// The distinct `ss` names of the states in the set (SYN-RECV once).
    pub fn names(self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for s in self.iter() {
            if !names.contains(&s.ss_name()) {
                names.push(s.ss_name());
            }
        }
        names
    }

    /// Parses one `--state` value with `ss`'s names (`established`, `syn-sent`, ...,
    /// `listening`) and groups (`all`, `connected`, `synchronized`, `bucket`, `big`),
    /// as iproute2's `scan_state` defines them.
    pub fn parse_name(name: &str) -> Result<StateSet> {
        use TcpState::*;
        let one = |s: &[TcpState]| s.iter().fold(StateSet::EMPTY, |acc, s| acc.with(*s));
        let without = |s: &[TcpState]| StateSet(s.iter().fold(StateSet::ALL.0, |acc, s| acc & !(1 << *s as u32)));
        let set = match name.to_ascii_lowercase().as_str() {
            "all" => StateSet::ALL,
            "established" | "estab" => one(&[Established]),
            "syn-sent" => one(&[SynSent]),
            "syn-recv" | "syn-rcv" => one(&[SynRecv, NewSynRecv]),
            "fin-wait-1" => one(&[FinWait1]),
            "fin-wait-2" => one(&[FinWait2]),
            "time-wait" => one(&[TimeWait]),
            // ss names CLOSE `unconnected` (a UDP socket's state when it is not connected).
            "closed" | "close" | "unconnected" | "unconn" => one(&[Close]),
            "close-wait" => one(&[CloseWait]),
            "last-ack" => one(&[LastAck]),
            "listening" | "listen" => one(&[Listen]),
            "closing" => one(&[Closing]),
            // ss: every state but LISTEN and CLOSED ...
            "connected" => without(&[Listen, Close]),
            // ... and of those, not SYN-SENT (SYN-RECV stays: the peer's SYN was answered)
            "synchronized" => without(&[Listen, Close, SynSent]),
            // ss: the minisockets, SYN-RECV (request sockets) and TIME-WAIT ...
            "bucket" => one(&[SynRecv, NewSynRecv, TimeWait]),
            // ... and every other state. ss's own mask keeps the kernel-only NEW_SYN_RECV
            // bit, so ss's `big` still returns request sockets; here `big` is exactly
            // the complement of `bucket`.
            "big" => without(&[SynRecv, NewSynRecv, TimeWait]),
            _ => {
                return Err(Error::InvalidFilter(format!(
                    "unknown TCP state {name:?} (expected one of: all, connected, synchronized, bucket, big, established, syn-sent, syn-recv, fin-wait-1, fin-wait-2, time-wait, closed, unconnected, close-wait, last-ack, listening, closing)"
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

    /// `--state` values that select exactly this set (`all` for [`StateSet::ALL`]).
    pub fn flag_names(self) -> Vec<&'static str> {
        if self == StateSet::ALL {
            return vec!["all"];
        }
        self.flag_names_of_states()
    }

    fn flag_names_of_states(self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for s in self.iter() {
            if !names.contains(&s.flag_name()) {
                names.push(s.flag_name());
            }
        }
        names
    }
}

impl Serialize for StateSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

/// An inclusive port range (`80` or `8000-8099`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PortRange {
    /// The lowest port of the range.
    pub lo: u16,
    /// The highest port of the range (equal to `lo` for one port).
    pub hi: u16,
}

impl PortRange {
    /// The range holding only `port`.
    pub fn one(port: u16) -> PortRange {
        PortRange { lo: port, hi: port }
    }

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
            None => PortRange::one(port(s)?),
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
    if let Some((_, zone)) = s.split_once('%') {
        // `fe80::1%eth0`: the zone is the interface a link-local address lives on.
        return Err(bad(&format!(
            "an IPv6 zone is not part of an address here; give the address alone and --dev {}",
            zone.split('/').next().unwrap_or(zone)
        )));
    }
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

/// Which transport protocols a command acts on (`-t`, `-u`, `-A`): TCP unless said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Protocols {
    /// TCP sockets.
    pub tcp: bool,
    /// UDP sockets (through the UDP sock_diag handler).
    pub udp: bool,
}

impl Protocols {
    /// TCP only, the default.
    pub const TCP: Protocols = Protocols { tcp: true, udp: false };

    /// The `IPPROTO_*` numbers to dump, TCP first.
    pub fn ids(self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.tcp {
            out.push(libc::IPPROTO_TCP as u8);
        }
        if self.udp {
            out.push(libc::IPPROTO_UDP as u8);
        }
        out
    }

    /// `tcp`, `udp`.
    pub fn names(self) -> Vec<&'static str> {
        self.ids().into_iter().map(|p| if p == libc::IPPROTO_UDP as u8 { "udp" } else { "tcp" }).collect()
    }
}

impl Default for Protocols {
    fn default() -> Self {
        Protocols::TCP
    }
}

impl Serialize for Protocols {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

/// Address family selection (`-4` / `-6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
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

/// `ip` with IPv4-mapped IPv6 addresses turned into the IPv4 address they stand for.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    as_ipv4(ip).map_or(ip, IpAddr::V4)
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

/// A cgroup v2 directory, as `--cgroup` named it, and its id (the
/// directory's inode number on cgroup2fs, what the kernel compares).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Cgroup {
    /// As given (or found) on the command line.
    pub path: String,
    /// The cgroup id.
    pub id: u64,
    /// It is the root of its cgroup2 hierarchy: on a host without cgroup v2
    /// controllers every process is there, so it narrows nothing.
    #[serde(skip)]
    pub root: bool,
}

/// `--mark VALUE[/MASK]`: sockets whose `SO_MARK & MASK == VALUE` (as `ss`'s `fwmark`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Mark {
    /// The value compared.
    pub value: u32,
    /// The bits compared (all by default).
    pub mask: u32,
}

impl FromStr for Mark {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let num = |p: &str| {
            let p = p.trim();
            let parsed = match p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
                Some(hex) => u32::from_str_radix(hex, 16),
                None => p.parse::<u32>(),
            };
            parsed.map_err(|_| {
                Error::InvalidFilter(format!(
                    "bad mark {s:?}: expected VALUE or VALUE/MASK, decimal or 0x-hex, 32 bits"
                ))
            })
        };
        let mark = match s.split_once('/') {
            Some((v, m)) => Mark { value: num(v)?, mask: num(m)? },
            None => Mark { value: num(s)?, mask: u32::MAX },
        };
        if mark.value & !mark.mask != 0 {
            return Err(Error::InvalidFilter(format!(
                "bad mark {s:?}: the value has bits outside the mask, so nothing could match"
            )));
        }
        Ok(mark)
    }
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mask == u32::MAX {
            write!(f, "{:#x}", self.value)
        } else {
            write!(f, "{:#x}/{:#x}", self.value, self.mask)
        }
    }
}

/// Which TCP sockets to act on. Within one field the values are alternatives
/// (OR); across fields every condition must hold (AND). `dst`/`dport` are the
/// peer's address and port, `src`/`sport` the local ones, as in `ss`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Filter {
    /// Peer address prefixes.
    pub dst: Vec<IpNet>,
    /// Local address prefixes.
    pub src: Vec<IpNet>,
    /// Peer port ranges.
    pub dport: Vec<PortRange>,
    /// Local port ranges.
    pub sport: Vec<PortRange>,
    /// TCP states.
    pub states: StateSet,
    /// `-4` / `-6`: decided by the socket's local address (IPv4-mapped counts as IPv4).
    pub family: Option<Family>,
    /// Only sockets that are an open file descriptor of one of these processes.
    pub pids: Vec<u32>,
    /// Only sockets created by a process of one of these cgroups (v2; the
    /// cgroup itself, not its descendants, as the kernel compares).
    pub cgroups: Vec<Cgroup>,
    /// Only sockets bound to one of these interfaces (their index in the
    /// target namespace): `SO_BINDTODEVICE`, or an IPv6 link-local scope — as `ss`'s `dev`.
    pub devs: Vec<u32>,
    /// Only sockets whose mark matches one of these.
    pub marks: Vec<Mark>,
    /// ss's filter expression (positional words), ANDed with the flags.
    pub expression: Option<Expr>,
    /// TCP, UDP or both.
    pub protocols: Protocols,
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
            cgroups: Vec::new(),
            devs: Vec::new(),
            marks: Vec::new(),
            expression: None,
            protocols: Protocols::TCP,
        }
    }
}

impl Filter {
    /// Checks the filter for contradictions (e.g. `-4` with an IPv6 `--dst`).
    pub fn validate(&self) -> Result<()> {
        if self.states == StateSet::EMPTY {
            return Err(Error::InvalidFilter("no TCP state selected".into()));
        }
        if self.protocols.ids().is_empty() {
            return Err(Error::InvalidFilter("no protocol selected (tcp, udp)".into()));
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
        if self.pids.contains(&0) {
            return Err(Error::InvalidFilter("pid 0 is not a process".into()));
        }
        if self.devs.contains(&0) {
            return Err(Error::InvalidFilter("interface index 0 is no interface".into()));
        }
        if let Some(m) = self.marks.iter().find(|m| m.value & !m.mask != 0) {
            return Err(Error::InvalidFilter(format!("mark {m}: the value has bits outside the mask")));
        }
        Ok(())
    }

    /// The states asked of `udp`'s table or TCP's. UDP sockets are ESTAB
    /// (connected) or UNCONN; the default set means connected ones only, as
    /// `ss -u` lists them: an unconnected socket is a server's or a client's
    /// before it connects, and a destroy cannot end one bound to its port.
    pub fn states_for(&self, udp: bool) -> StateSet {
        if udp && self.states == StateSet::DEFAULT {
            StateSet::EMPTY.with(TcpState::Established)
        } else {
            self.states
        }
    }

    /// True when the filter does not narrow what it matches: the union of the
    /// `--dst` (or `--src`) prefixes covers a whole address family, the union of
    /// the port ranges covers every port a socket in the chosen states can have,
    /// no `--pid` or `--dev` is given, every `--cgroup` is a hierarchy's root,
    /// some `--mark` asks for no set bit (mark 0 is every unmarked socket),
    /// and the expression does not narrow either. A kill with such a filter is
    /// refused unless explicitly allowed.
    pub fn is_catch_all(&self) -> bool {
        // A listener's peer is unspecified (address and port 0), and so is the
        // local address of one bound to the wildcard: a condition holding those
        // matches every such listener. Unconnected UDP sockets likewise.
        let unspecified = self.states.contains(TcpState::Listen)
            || (self.protocols.udp && self.states_for(true).contains(TcpState::Close));
        let narrows = nets_narrow(&self.dst, unspecified)
            || nets_narrow(&self.src, unspecified)
            || ports_narrow(&self.dport, unspecified)
            || ports_narrow(&self.sport, false)
            || !self.devs.is_empty()
            || (!self.cgroups.is_empty() && self.cgroups.iter().all(|c| !c.root))
            || (!self.marks.is_empty() && self.marks.iter().all(|m| m.value != 0))
            || self.expression.as_ref().is_some_and(|e| e.narrows(unspecified));
        !narrows && self.pids.is_empty()
    }

    /// Whether `sock` matches every address, port, state, family, interface,
    /// cgroup and mark condition (the process condition is checked separately,
    /// by inode). A mark the kernel did not report (it reports marks to
    /// CAP_NET_ADMIN only, never for TIME-WAIT) is left to the kernel's filter.
    pub fn matches(&self, sock: &TcpSocket) -> bool {
        let any_net = |nets: &[IpNet], ip| nets.is_empty() || nets.iter().any(|n| net_contains(n, ip));
        let any_port = |ranges: &[PortRange], p| ranges.is_empty() || ranges.iter().any(|r| r.contains(p));
        let local = sock.local();
        let peer = sock.peer();
        (if sock.is_udp() { self.protocols.udp } else { self.protocols.tcp })
            && self.family.is_none_or(|f| family_of(local.ip()) == f)
            && sock.state.is_some_and(|s| self.states_for(sock.is_udp()).contains(s))
            && any_net(&self.dst, peer.ip())
            && any_net(&self.src, local.ip())
            && any_port(&self.dport, peer.port())
            && any_port(&self.sport, local.port())
            && (self.devs.is_empty() || self.devs.contains(&sock.interface()))
            && (self.cgroups.is_empty() || self.cgroups.iter().any(|c| c.id == sock.cgroup))
            && (self.marks.is_empty() || sock.mark.is_none_or(|m| self.marks.iter().any(|k| m & k.mask == k.value)))
            && self.expression.as_ref().is_none_or(|e| e.matches(sock))
    }

    /// The command-line flags that select exactly this filter, e.g.
    /// `["--dst", "10.0.0.0/24", "--state", "established"]` (default states are implied).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut push = |flag: &str, value: String| {
            args.push(flag.to_string());
            args.push(value);
        };
        self.dst.iter().for_each(|n| push("--dst", n.to_string()));
        self.dport.iter().for_each(|r| push("--dport", r.to_string()));
        self.src.iter().for_each(|n| push("--src", n.to_string()));
        self.sport.iter().for_each(|r| push("--sport", r.to_string()));
        if self.states != StateSet::DEFAULT {
            self.states.flag_names().into_iter().for_each(|s| push("--state", s.to_string()));
        }
        self.pids.iter().for_each(|p| push("--pid", p.to_string()));
        self.cgroups.iter().for_each(|c| push("--cgroup", c.path.clone()));
        self.devs.iter().for_each(|d| push("--dev", d.to_string()));
        self.marks.iter().for_each(|m| push("--mark", m.to_string()));
        if self.protocols.udp {
            if self.protocols.tcp {
                args.push("-t".into());
            }
            args.push("-u".into());
        }
        match self.family {
            Some(Family::V4) => args.push("-4".into()),
            Some(Family::V6) => args.push("-6".into()),
            None => {}
        }
        if let Some(e) = &self.expression {
            // Positional, last: the words ss would take.
            args.push(e.to_string());
        }
        args
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_args().join(" "))
    }
}

/// The family a socket counts as for `-4`/`-6`: the one of its local address,
/// with IPv4-mapped IPv6 counted as IPv4. Connected sockets' two addresses
/// always agree; a listener's peer is unspecified, so the local side decides.
pub fn family_of(local: IpAddr) -> Family {
    if as_ipv4(local).is_some() {
        Family::V4
    } else {
        Family::V6
    }
}

/// Whether the union of `nets` leaves out part of both address families (so
/// it narrows). `unspecified` is set when sockets in the chosen states can
/// have the unspecified address on this side (listeners): a prefix holding it
/// then matches every one of them.
fn nets_narrow(nets: &[IpNet], unspecified: bool) -> bool {
    if nets.is_empty() {
        return false;
    }
    let agg = IpNet::aggregate(&nets.to_vec());
    let whole_v4 = IpNet::V4(Ipv4Net::default());
    let whole_v6 = IpNet::V6(Ipv6Net::default());
    let covers_family = agg.contains(&whole_v4) || agg.contains(&whole_v6);
    let holds_unspecified = unspecified
        && nets.iter().any(|n| {
            n.contains(&IpAddr::from(Ipv4Addr::UNSPECIFIED)) || n.contains(&IpAddr::from(Ipv6Addr::UNSPECIFIED))
        });
    !(covers_family || holds_unspecified)
}

/// Whether the union of `ranges` leaves out some port a socket can have:
/// 1-65535, and port 0 as well when `zero_possible` (a listener's peer
/// port), in which case a range holding 0 matches every such socket.
fn ports_narrow(ranges: &[PortRange], zero_possible: bool) -> bool {
    if ranges.is_empty() {
        return false;
    }
    let mut sorted = ranges.to_vec();
    sorted.sort_by_key(|r| r.lo);
    let mut next: u32 = 1; // first port not yet covered
    for r in &sorted {
        if u32::from(r.lo) > next {
            break;
        }
        next = next.max(u32::from(r.hi) + 1);
    }
    let covers_1_to_max = next > 65535;
    let holds_zero = zero_possible && sorted.first().is_some_and(|r| r.lo == 0);
    !(covers_1_to_max || holds_zero)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn sock(local: &str, peer: &str) -> TcpSocket {
        TcpSocket::for_test(local.parse::<SocketAddr>().unwrap(), peer.parse().unwrap(), TcpState::Established)
    }

    #[test]
    fn parses_ports_and_ranges() {
        assert_eq!("80".parse::<PortRange>().unwrap(), PortRange::one(80));
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
    fn parses_and_names_states() {
        assert_eq!(StateSet::parse_names::<&str>(&[]).unwrap(), StateSet::DEFAULT);
        assert!(!StateSet::DEFAULT.contains(TcpState::Listen));
        assert!(!StateSet::DEFAULT.contains(TcpState::TimeWait));
        assert!(StateSet::DEFAULT.contains(TcpState::SynSent));
        let s = StateSet::parse_names(&["established", "syn-sent"]).unwrap();
        assert!(s.contains(TcpState::Established) && s.contains(TcpState::SynSent));
        assert!(!s.contains(TcpState::FinWait1));
        assert_eq!(StateSet::parse_name("all").unwrap().bits(), 0x1FFE);
        assert!(StateSet::parse_name("establshed").is_err());
        // ss's own spellings, any case.
        for (alias, name) in [("unconnected", "closed"), ("syn-rcv", "syn-recv"), ("LISTENING", "listening")] {
            assert_eq!(StateSet::parse_name(alias).unwrap(), StateSet::parse_name(name).unwrap(), "{alias}");
        }
        // SYN-RECV is two kernel states but one name, listed once.
        let names = StateSet::ALL.names();
        assert_eq!(names.iter().filter(|n| **n == "SYN-RECV").count(), 1, "{names:?}");
        assert_eq!(names.len(), 11);
        assert_eq!(StateSet::ALL.flag_names(), vec!["all"]);
        // ss's groups (iproute2 scan_state): synchronized keeps SYN-RECV, drops SYN-SENT.
        let sync = StateSet::parse_name("synchronized").unwrap();
        assert!(sync.contains(TcpState::SynRecv) && sync.contains(TcpState::NewSynRecv));
        assert!(!sync.contains(TcpState::SynSent) && !sync.contains(TcpState::Listen));
        assert!(!sync.contains(TcpState::Close) && sync.contains(TcpState::TimeWait));
        let bucket = StateSet::parse_name("bucket").unwrap();
        assert_eq!(bucket.names(), vec!["SYN-RECV", "TIME-WAIT"]);
        let big = StateSet::parse_name("big").unwrap();
        assert_eq!(big.union(bucket), StateSet::ALL);
        assert!(!big.contains(TcpState::SynRecv) && !big.contains(TcpState::NewSynRecv));
        // Every set's flag names select it again.
        for set in [StateSet::DEFAULT, s, StateSet::parse_name("syn-recv").unwrap(), sync, bucket, big] {
            assert_eq!(StateSet::parse_names(&set.flag_names()).unwrap(), set);
        }
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

        // A listener bound to a mapped address: its local side decides (IPv4).
        let mut l = sock("[::ffff:10.77.0.3]:80", "[::]:0");
        l.state = Some(TcpState::Listen);
        let states = StateSet::parse_name("listening").unwrap();
        assert!(Filter { states, ..v4.clone() }.matches(&l));
        assert!(!Filter { states, ..v6.clone() }.matches(&l));

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
    fn catch_all_judges_the_union() {
        let f = |dst: &[&str], dport: &[&str], states: &[&str], pids: &[u32]| Filter {
            dst: dst.iter().map(|s| parse_cidr(s).unwrap()).collect(),
            dport: dport.iter().map(|s| s.parse().unwrap()).collect(),
            states: StateSet::parse_names(states).unwrap(),
            pids: pids.to_vec(),
            ..Filter::default()
        };
        for (dst, dport, states) in [
            (&[][..], &[][..], &[][..]),
            (&["0.0.0.0/0"], &[], &[]),
            (&["10.0.0.1", "::/0"], &[], &[]),
            (&["0.0.0.0/1", "128.0.0.0/1"], &[], &[]),
            (&["::/1", "8000::/1"], &[], &[]),
            (&[], &["1-65535"], &[]),
            (&[], &["0-65535"], &[]),
            (&[], &["1-40000", "40001-65535"], &[]),
            (&[], &["40001-65535", "1-40000"], &[]),
            (&[], &["0"], &["listening"]),
            (&["0.0.0.0"], &[], &["listening"]),
        ] {
            assert!(f(dst, dport, states, &[]).is_catch_all(), "{dst:?} {dport:?} {states:?}");
        }
        for (dst, dport, states) in [
            (&["10.0.0.1"][..], &[][..], &[][..]),
            (&["0.0.0.0/1"], &[], &[]),
            (&["0.0.0.0/1", "128.0.0.0/2"], &[], &[]),
            (&[], &["80"], &[]),
            (&[], &["1-65534"], &[]),
            (&[], &["0"], &[]), // no listener selected: port 0 matches nothing
            (&[], &["1-100", "102-65535"], &[]),
        ] {
            assert!(!f(dst, dport, states, &[]).is_catch_all(), "{dst:?} {dport:?} {states:?}");
        }
        assert!(!f(&[], &[], &[], &[1]).is_catch_all());
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

    #[test]
    fn serializes_and_displays() {
        let f = Filter {
            dst: vec![parse_cidr("10.0.0.0/24").unwrap()],
            dport: vec![PortRange::one(80)],
            states: StateSet::ALL,
            family: Some(Family::V4),
            ..Filter::default()
        };
        assert_eq!(f.to_string(), "--dst 10.0.0.0/24 --dport 80 --state all -4");
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["states"].as_array().unwrap().len(), 11);
        assert_eq!(v["family"], "v4");
    }
}
