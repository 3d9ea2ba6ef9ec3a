//! ss's filter EXPRESSION (ss(8)): the tree, its text, whether it narrows,
//! and the user-space match that re-checks what the kernel's bytecode
//! returned (as ss does with `run_ssfilter`).
//!
//! Host conditions follow ss and the kernel, not the `--dst`/`--src` flags:
//! an IPv4 prefix matches IPv4 sockets and IPv4-mapped IPv6 ones, an IPv6
//! prefix (a mapped one included) matches the raw address of IPv6 sockets
//! only, and `::/0` is every IPv6 socket.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{as_ipv4, nets_narrow, ports_narrow, Cgroup, Mark, PortRange};
use crate::socket::TcpSocket;

/// Which end of the connection a condition looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The local end (`src`, `sport`).
    Src,
    /// The peer (`dst`, `dport`).
    Dst,
}

/// A port comparison of `dport`/`sport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cmp {
    /// `>=`, `ge`, `geq`
    Ge,
    /// `<=`, `le`, `leq`
    Le,
    /// `>`, `gt`
    Gt,
    /// `<`, `lt`
    Lt,
}

impl Cmp {
    fn holds(self, port: u16, bound: u16) -> bool {
        match self {
            Cmp::Ge => port >= bound,
            Cmp::Le => port <= bound,
            Cmp::Gt => port > bound,
            Cmp::Lt => port < bound,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Cmp::Ge => ">=",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Lt => "<",
        }
    }

    /// The ports that satisfy it (`None`: none do).
    fn range(self, bound: u16) -> Option<PortRange> {
        match self {
            Cmp::Ge => Some(PortRange { lo: bound, hi: u16::MAX }),
            Cmp::Le => Some(PortRange { lo: 0, hi: bound }),
            Cmp::Gt => bound.checked_add(1).map(|lo| PortRange { lo, hi: u16::MAX }),
            Cmp::Lt => bound.checked_sub(1).map(|hi| PortRange { lo: 0, hi }),
        }
    }
}

/// One condition of an expression.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Term {
    /// `dst PREFIX[:PORT]`, `src ...`, `dst *:PORT`, `dport = :PORT`: the
    /// address (any when `None`) and the port (any when `None`) of one side.
    Host {
        /// The side compared.
        side: Side,
        /// The prefix, host bits cleared.
        net: Option<IpNet>,
        /// The exact port.
        port: Option<u16>,
    },
    /// `dport > :1024` and the like.
    Port {
        /// The side compared.
        side: Side,
        /// The comparison.
        cmp: Cmp,
        /// The bound.
        port: u16,
    },
    /// `dev NAME|INDEX`: bound to the interface (`SO_BINDTODEVICE` or a link-local scope).
    Dev {
        /// As written.
        name: String,
        /// Its index in the target namespace (0 until resolved).
        index: u32,
    },
    /// `fwmark VALUE[/MASK]`.
    Mark(Mark),
    /// `cgroup PATH` (the id 0 until resolved).
    Cgroup(Cgroup),
    /// `autobound`: the kernel chose the local port (no explicit bind). The
    /// kernel checks the bind lock; the user-space check is ss's, the local
    /// port within the namespace's `ip_local_port_range`.
    Autobound {
        /// The namespace's ephemeral port range (ss's fallback until read).
        ephemeral: PortRange,
    },
}

/// An ss filter expression. `and` and `or` have equal precedence and group
/// from the left, as in ss's grammar: `a or b and c` is `(a or b) and c`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    /// One condition.
    Term(Term),
    /// `not E`, `! E`
    Not(Box<Expr>),
    /// `E and E`, `E & E`, `E E`
    And(Box<Expr>, Box<Expr>),
    /// `E or E`, `E | E`
    Or(Box<Expr>, Box<Expr>),
}

/// The default ephemeral range ss assumes when it cannot read the sysctl.
pub const SS_FALLBACK_EPHEMERAL: PortRange = PortRange { lo: 1024, hi: 4999 };

impl Expr {
    /// Whether `sock` satisfies the expression, as ss's user-space match
    /// decides it (a mark or cgroup id the kernel did not report counts as 0).
    pub fn matches(&self, sock: &TcpSocket) -> bool {
        match self {
            Expr::Term(t) => t.matches(sock),
            Expr::Not(e) => !e.matches(sock),
            Expr::And(a, b) => a.matches(sock) && b.matches(sock),
            Expr::Or(a, b) => a.matches(sock) || b.matches(sock),
        }
    }

    /// Whether the expression by itself narrows what a kill reaches (see
    /// [`crate::filter::Filter::is_catch_all`]); `unspecified`: sockets with an
    /// unspecified address and port 0 can match (listeners' peers, unconnected
    /// UDP sockets). A term narrows as the equivalent flag does; `and` narrows
    /// when either side does; a negation never does (`not dst 10.0.0.7` is
    /// nearly everything); `or` narrows when every alternative is covered by
    /// one narrowing term and the union of those terms, field by field,
    /// still leaves something out (`dport < :1024 or dport >= :1024` does not).
    pub fn narrows(&self, unspecified: bool) -> bool {
        match self {
            Expr::Term(t) => t.narrows(unspecified),
            Expr::Not(_) => false,
            Expr::And(a, b) => a.narrows(unspecified) || b.narrows(unspecified),
            Expr::Or(..) => {
                let mut alternatives = Vec::new();
                self.alternatives(&mut alternatives);
                let covers: Option<Vec<&Term>> = alternatives.iter().map(|e| e.cover(unspecified)).collect();
                covers.is_some_and(|terms| union_narrows(&terms, unspecified))
            }
        }
    }

    /// The alternatives of an `or` chain.
    fn alternatives<'a>(&'a self, out: &mut Vec<&'a Expr>) {
        match self {
            Expr::Or(a, b) => {
                a.alternatives(out);
                b.alternatives(out);
            }
            other => out.push(other),
        }
    }

    /// One narrowing term that holds wherever the expression holds.
    fn cover(&self, unspecified: bool) -> Option<&Term> {
        match self {
            Expr::Term(t) => t.narrows(unspecified).then_some(t),
            Expr::And(a, b) => a.cover(unspecified).or_else(|| b.cover(unspecified)),
            Expr::Not(_) | Expr::Or(..) => None,
        }
    }

    /// Every term, left to right.
    pub fn terms(&self) -> Vec<&Term> {
        let mut out = Vec::new();
        self.walk(&mut |t| out.push(t));
        out
    }

    /// Every term, mutably (to resolve names against the system).
    pub fn terms_mut(&mut self) -> Vec<&mut Term> {
        let mut out = Vec::new();
        fn go<'a>(e: &'a mut Expr, out: &mut Vec<&'a mut Term>) {
            match e {
                Expr::Term(t) => out.push(t),
                Expr::Not(x) => go(x, out),
                Expr::And(a, b) | Expr::Or(a, b) => {
                    go(a, out);
                    go(b, out);
                }
            }
        }
        go(self, &mut out);
        out
    }

    fn walk<'a>(&'a self, f: &mut impl FnMut(&'a Term)) {
        match self {
            Expr::Term(t) => f(t),
            Expr::Not(x) => x.walk(f),
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.walk(f);
                b.walk(f);
            }
        }
    }
}

fn side_addr(sock: &TcpSocket, side: Side) -> std::net::SocketAddr {
    match side {
        Side::Src => sock.local(),
        Side::Dst => sock.peer(),
    }
}

impl Term {
    /// Whether `sock` satisfies this one condition.
    pub fn matches(&self, sock: &TcpSocket) -> bool {
        match self {
            Term::Host { side, net, port } => {
                let at = side_addr(sock, *side);
                port.is_none_or(|p| at.port() == p) && net.is_none_or(|n| host_matches(&n, sock, at.ip()))
            }
            Term::Port { side, cmp, port } => cmp.holds(side_addr(sock, *side).port(), *port),
            Term::Dev { index, .. } => sock.interface() == *index,
            Term::Mark(m) => sock.mark.unwrap_or(0) & m.mask == m.value,
            Term::Cgroup(c) => sock.cgroup == c.id,
            Term::Autobound { ephemeral } => ephemeral.contains(sock.local().port()),
        }
    }

    fn narrows(&self, unspecified: bool) -> bool {
        union_narrows(&[self], unspecified)
    }
}

/// A prefix as the catch-all rule sees it: an IPv4-mapped IPv6 prefix is the
/// IPv4 prefix it stands for, and an IPv6 prefix holding every mapped address
/// (`::/64`, `::ffff:0:0/96`) is every IPv4 address too.
fn for_coverage(net: IpNet) -> IpNet {
    const MAPPED: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0);
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, n.prefix_len() - 96).map_or(net, |v| IpNet::V4(v.trunc())),
            None => net,
        },
        IpNet::V6(n) if n.contains(&MAPPED) => IpNet::V4(ipnet::Ipv4Net::default()),
        other => other,
    }
}

/// Whether the union of `terms` leaves something out: per field (each
/// side's addresses, each side's ports, marks, cgroups) the union must
/// narrow; fields are independent, so a socket outside every field's union
/// exists. `dst *` and `autobound` never narrow.
fn union_narrows(terms: &[&Term], unspecified: bool) -> bool {
    let mut nets: [Vec<IpNet>; 2] = [Vec::new(), Vec::new()];
    let mut ports: [Vec<PortRange>; 2] = [Vec::new(), Vec::new()];
    let idx = |side: &Side| usize::from(*side == Side::Dst);
    for t in terms {
        let ok = match t {
            Term::Host { side, net: Some(n), .. } => {
                nets[idx(side)].push(for_coverage(*n));
                true
            }
            Term::Host { side, net: None, port: Some(p) } => {
                ports[idx(side)].push(PortRange::one(*p));
                true
            }
            Term::Host { net: None, port: None, .. } | Term::Autobound { .. } => false,
            Term::Port { side, cmp, port } => {
                if let Some(r) = cmp.range(*port) {
                    ports[idx(side)].push(r);
                }
                true
            }
            // An unbound socket (most) is on no interface.
            Term::Dev { index, .. } => *index != 0,
            // An unmarked socket (most) has mark 0: a term asking for a set bit leaves it out.
            Term::Mark(m) => m.value != 0,
            Term::Cgroup(c) => !c.root,
        };
        if !ok {
            return false;
        }
    }
    // Listeners and unconnected UDP sockets: unspecified addresses, peer port 0.
    let nets_ok = nets.iter().all(|n| n.is_empty() || nets_narrow(n, unspecified));
    let ports_ok = ports.iter().enumerate().all(|(i, r)| {
        let zero = unspecified && i == 1;
        r.is_empty() || ports_narrow(r, zero)
    });
    nets_ok && ports_ok
}

/// ss's and the kernel's host match: an IPv4 prefix holds IPv4 addresses and
/// IPv4-mapped IPv6 ones; an IPv6 prefix holds IPv6 sockets' raw addresses
/// (`::/0` every IPv6 socket, the unspecified address of a listener included).
fn host_matches(net: &IpNet, sock: &TcpSocket, ip: IpAddr) -> bool {
    match net {
        IpNet::V4(n) => as_ipv4(ip).is_some_and(|v4| n.contains(&v4)),
        IpNet::V6(n) => match ip {
            IpAddr::V6(v6) => sock.family() == "inet6" && n.contains(&v6),
            IpAddr::V4(_) => false,
        },
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Src => "src",
            Side::Dst => "dst",
        })
    }
}

fn port_word(side: Side) -> &'static str {
    match side {
        Side::Src => "sport",
        Side::Dst => "dport",
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Term::Host { side, net: None, port: Some(p) } => write!(f, "{} = :{p}", port_word(*side)),
            Term::Host { side, net: None, port: None } => write!(f, "{side} *"),
            Term::Host { side, net: Some(n), port: None } => write!(f, "{side} {n}"),
            Term::Host { side, net: Some(IpNet::V4(n)), port: Some(p) } => write!(f, "{side} {n}:{p}"),
            Term::Host { side, net: Some(IpNet::V6(n)), port: Some(p) } => write!(f, "{side} [{n}]:{p}"),
            Term::Port { side, cmp, port } => write!(f, "{} {} :{port}", port_word(*side), cmp.symbol()),
            Term::Dev { name, .. } => write!(f, "dev {name}"),
            Term::Mark(m) => write!(f, "fwmark {m}"),
            Term::Cgroup(c) => write!(f, "cgroup {}", c.path),
            Term::Autobound { .. } => f.write_str("autobound"),
        }
    }
}

/// The canonical text, which parses back to the same tree: the right operand
/// of `and`/`or` and the operand of `not` are parenthesized when they are
/// themselves `and`/`or` (ss groups from the left).
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let grouped = |e: &Expr, f: &mut fmt::Formatter<'_>| match e {
            Expr::And(..) | Expr::Or(..) => write!(f, "( {e} )"),
            _ => write!(f, "{e}"),
        };
        match self {
            Expr::Term(t) => write!(f, "{t}"),
            Expr::Not(e) => {
                f.write_str("not ")?;
                grouped(e, f)
            }
            Expr::And(a, b) | Expr::Or(a, b) => {
                write!(f, "{a} {} ", if matches!(self, Expr::And(..)) { "and" } else { "or" })?;
                grouped(b, f)
            }
        }
    }
}

impl serde::Serialize for Expr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Resolves what the words name against the system: interface names and
/// indexes in the target namespace, cgroup paths to ids, and `autobound`'s
/// ephemeral range from the namespace's `ip_local_port_range` (as ss reads it).
pub fn resolve(expr: &mut Expr, netns: Option<&crate::netns::Netns>) -> crate::error::Result<()> {
    let mut ephemeral: Option<PortRange> = None;
    for term in expr.terms_mut() {
        match term {
            Term::Dev { name, index } => *index = crate::netns::interface_index(netns, name)?,
            Term::Cgroup(c) => *c = Cgroup { path: c.path.clone(), ..crate::cgroup::resolve(&c.path)? },
            Term::Autobound { ephemeral: range } => {
                if ephemeral.is_none() {
                    let read = || std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
                    let text = match netns {
                        Some(ns) => ns.run(read)?,
                        None => read(),
                    };
                    ephemeral = Some(text.as_deref().and_then(parse_port_range).unwrap_or(SS_FALLBACK_EPHEMERAL));
                }
                *range = ephemeral.unwrap_or(SS_FALLBACK_EPHEMERAL);
            }
            _ => {}
        }
    }
    Ok(())
}

/// `ip_local_port_range`'s "LOW\tHIGH".
pub fn parse_port_range(text: &str) -> Option<PortRange> {
    let mut it = text.split_whitespace().map(|w| w.parse::<u16>().ok());
    match (it.next()??, it.next()??) {
        (lo, hi) if lo <= hi => Some(PortRange { lo, hi }),
        _ => None,
    }
}
