//! A sock_diag session in one namespace, and a filter made ready for the kernel.

use ipnet::IpNet;

use crate::diag::{bytecode, DumpSpec, SockDiag};
use crate::error::{Error, NetlinkOp, Result};
use crate::filter::{Family, Filter, PortRange};
use crate::netns::Netns;
use crate::procfs::SockStat;

/// A sock_diag session in one network namespace: two netlink sockets (the
/// families are dumped, and large destroy sets destroyed, on both cores) and
/// the namespace's socket counters.
pub struct Engine {
    pub(super) diag: [SockDiag; 2],
    /// `None` when /proc cannot tell: then every family is always dumped.
    pub(super) stat: Option<SockStat>,
    /// Both families in one walk (`TCPDIAG_GETSOCK`); cleared when the kernel refuses it.
    pub(super) one_walk: bool,
}

impl Engine {
    /// Opens a session in `netns`, or in the calling thread's namespace.
    pub fn open(netns: Option<&Netns>) -> Result<Engine> {
        // Everything bound to the namespace is opened on the thread that entered it.
        let here = || -> Result<Engine> {
            Ok(Engine { diag: [SockDiag::open()?, SockDiag::open()?], stat: SockStat::open().ok(), one_walk: true })
        };
        match netns {
            Some(ns) => ns.run(here)?,
            None => here(),
        }
    }
}

/// A filter made ready for the kernel: bytecode compiled once, families
/// chosen, and single ports lifted into the request header.
#[derive(Debug, Clone)]
pub struct Query {
    pub(super) filter: Filter,
    bytecode: Vec<u8>,
    pub(super) families: Vec<u8>,
    sport: u16,
    dport: u16,
}

impl Query {
    /// Validates `filter` and compiles it.
    pub fn new(filter: Filter) -> Result<Query> {
        filter.validate()?;
        let bytecode = bytecode::compile(&filter);
        if bytecode.len() > crate::diag::wire::MAX_BYTECODE {
            return Err(Error::InvalidFilter(format!(
                "too many --dst/--src/--dport/--sport values for one kernel filter program ({} bytes; at most {}, about 2,000 addresses or ports): split the run",
                bytecode.len(),
                crate::diag::wire::MAX_BYTECODE
            )));
        }
        let only_v6 = |nets: &[IpNet]| !nets.is_empty() && nets.iter().all(|n| matches!(n, IpNet::V6(_)));
        // The AF_INET6 dump also returns IPv4-mapped sockets, so IPv4 needs both
        // dumps; pure IPv6 needs only the second one.
        let families = if filter.family == Some(Family::V6) || only_v6(&filter.dst) || only_v6(&filter.src) {
            vec![libc::AF_INET6 as u8]
        } else {
            vec![libc::AF_INET as u8, libc::AF_INET6 as u8]
        };
        // One nonzero port is also checked in the header, where the kernel looks
        // before it runs the bytecode (which still decides).
        let single = |ranges: &[PortRange]| match ranges {
            [r] if r.lo == r.hi => r.lo,
            _ => 0,
        };
        let (sport, dport) = (single(&filter.sport), single(&filter.dport));
        Ok(Query { filter, bytecode, families, sport, dport })
    }

    /// The TCP dump request for `family`.
    #[cfg(any(test, feature = "testing"))]
    pub fn spec(&self, family: u8) -> DumpSpec<'_> {
        self.spec_for(family, libc::IPPROTO_TCP as u8)
    }

    /// The dump request for `family` and `protocol` (`IPPROTO_TCP` or `IPPROTO_UDP`).
    pub fn spec_for(&self, family: u8, protocol: u8) -> DumpSpec<'_> {
        DumpSpec {
            family,
            states: self.filter.states_for(protocol == libc::IPPROTO_UDP as u8),
            bytecode: &self.bytecode,
            sport: self.sport,
            dport: self.dport,
            protocol,
        }
    }

    /// The filter this query was built from.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// A dump error, said in the words of the filter that caused it: the
    /// kernel refuses a mark condition without CAP_NET_ADMIN (EPERM), and a
    /// cgroup condition it does not know (EINVAL, before Linux 5.9).
    pub fn explain(&self, e: Error) -> Error {
        let errno = match &e {
            Error::Netlink { op: NetlinkOp::Dump, source } => source.raw_os_error(),
            _ => None,
        };
        match (errno, self.filter.marks.first(), self.filter.cgroups.first()) {
            (Some(libc::EPERM), Some(m), _) => Error::InvalidFilter(format!(
                "--mark {m}: the kernel accepts a mark condition only from CAP_NET_ADMIN (even to list)"
            )),
            (Some(libc::EINVAL), _, Some(c)) => Error::Cgroup {
                path: c.path.clone(),
                reason: "this kernel cannot filter sockets by cgroup (INET_DIAG_BC_CGROUP_COND: Linux 5.9+ with CONFIG_SOCK_CGROUP_DATA)".into(),
            },
            _ => e,
        }
    }
}
