//! Where a server's connections are: the places a run watches.
//!
//! `show servers state` prints one `srv_addr:srv_port`, but a server's
//! connections are not always there: a port-mapped server (`+1000`, printed
//! unmarked as `1000`) connects to the client's destination port plus or
//! minus the offset; a server with port 0 to the client's port; a server
//! moved at runtime (`set server addr`, DNS) keeps its sessions — and the
//! streams still retrying — at its previous address. A [`Place`] is an
//! address with one port or any port; the run's query covers every place, and
//! a socket counts only where a place matches it exactly.

use std::cell::RefCell;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use ipnet::IpNet;
use serde::{Serialize, Serializer};

use super::parse::ServerState;
use crate::audit::AuditLog;
use crate::cancel::Cancel;
use crate::engine::owners::Holders;
use crate::engine::run::Kernel;
use crate::engine::{DestroyPass, Engine, Query};
use crate::error::Result;
use crate::filter::{canonical_ip, Filter, PortRange, StateSet};
use crate::socket::{TcpSocket, TcpState};

/// An address and a port, or any port of the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Place {
    /// The address (IPv4-mapped IPv6 stands for the IPv4 one).
    pub ip: IpAddr,
    /// `None`: any port.
    pub port: Option<u16>,
}

impl Place {
    /// `addr` exactly; port 0 means any port (the client's).
    pub fn of(addr: SocketAddr) -> Place {
        Place { ip: canonical_ip(addr.ip()), port: (addr.port() != 0).then_some(addr.port()) }
    }

    /// Whether a connection to `peer` is at this place.
    pub fn holds(&self, peer: SocketAddr) -> bool {
        canonical_ip(peer.ip()) == self.ip && self.port.is_none_or(|p| p == peer.port())
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ip, self.port) {
            (IpAddr::V4(ip), Some(p)) => write!(f, "{ip}:{p}"),
            (IpAddr::V6(ip), Some(p)) => write!(f, "[{ip}]:{p}"),
            (IpAddr::V4(ip), None) => write!(f, "{ip}:*"),
            (IpAddr::V6(ip), None) => write!(f, "[{ip}]:*"),
        }
    }
}

impl Serialize for Place {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How surely a configured server is at a connection's peer address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// Its address and printed port (or port 0: any port).
    Exactly,
    /// Its address, at a listening port plus or minus its printed port: the
    /// printed port may be an offset (`+1000` prints as `1000`).
    Maybe,
}

/// Whether configured server `s` is at `peer`, given the ports HAProxy listens on.
pub fn server_at(s: &ServerState, peer: SocketAddr, listening: &[u16]) -> Option<At> {
    if s.addr.map(canonical_ip) != Some(canonical_ip(peer.ip())) {
        return None;
    }
    let port = peer.port();
    if s.port == 0 || s.port == port {
        return Some(At::Exactly);
    }
    let mapped = |l: u16| l.checked_add(s.port) == Some(port) || l.checked_sub(s.port) == Some(port);
    listening.iter().any(|&l| mapped(l)).then_some(At::Maybe)
}

/// The places a run watches, each once, in the order they were learnt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Places(Vec<Place>);

impl Places {
    /// Adds `place`; whether it was new (and not covered by an any-port place).
    pub fn add(&mut self, place: Place) -> bool {
        let covered = self.0.iter().any(|p| p.ip == place.ip && (p.port.is_none() || p.port == place.port));
        if covered {
            return false;
        }
        if place.port.is_none() {
            // An any-port place covers the address's single ports.
            self.0.retain(|p| p.ip != place.ip);
        }
        self.0.push(place);
        true
    }

    /// Whether a connection to `peer` is at one of the places.
    pub fn holds(&self, peer: SocketAddr) -> bool {
        self.0.iter().any(|p| p.holds(peer))
    }

    /// The places.
    pub fn iter(&self) -> impl Iterator<Item = &Place> {
        self.0.iter()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The kernel filter covering every place: their addresses and their
    /// ports (any port when one place has any). Several places make it
    /// wider than their union (every address with every port); what is not
    /// at a place is left out afterwards ([`Places::holds`]).
    pub fn filter(&self) -> Filter {
        let mut dst: Vec<IpNet> = Vec::new();
        let mut dport: Vec<PortRange> = Vec::new();
        for p in &self.0 {
            let net = IpNet::from(p.ip);
            if !dst.contains(&net) {
                dst.push(net);
            }
            if let Some(port) = p.port {
                if !dport.iter().any(|r| r.contains(port)) {
                    dport.push(PortRange::one(port));
                }
            }
        }
        if self.0.iter().any(|p| p.port.is_none()) {
            dport.clear();
        }
        // Any state but LISTEN and TIME-WAIT; never the source address
        // (`source ... usesrc clientip` makes it the client's).
        Filter { dst, dport, states: StateSet::DEFAULT, ..Filter::default() }
    }
}

impl Serialize for Places {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

/// The kernel as a run over places sees it: each look's query is built
/// from the places as they are then (the classifier adds places as HAProxy's
/// tables name them), so a place learnt during the run is looked at from
/// the next look on.
pub struct PlacesKernel<'a> {
    engine: &'a mut Engine,
    places: Rc<RefCell<Places>>,
    built: Places,
    query: Query,
}

impl<'a> PlacesKernel<'a> {
    /// Looks at `places` through `engine`.
    pub fn new(engine: &'a mut Engine, places: Rc<RefCell<Places>>) -> Result<PlacesKernel<'a>> {
        let built = places.borrow().clone();
        let query = Query::new(built.filter())?;
        Ok(PlacesKernel { engine, places, built, query })
    }
}

impl Kernel for PlacesKernel<'_> {
    fn collect(&mut self) -> Result<Vec<TcpSocket>> {
        // No place (a sweep that found nothing): nothing to look at, and no
        // catch-all query either.
        if self.places.borrow().is_empty() {
            return Ok(Vec::new());
        }
        if *self.places.borrow() != self.built {
            self.built = self.places.borrow().clone();
            self.query = Query::new(self.built.filter())?;
        }
        self.engine.collect(&self.query)
    }

    fn destroy(&mut self, sockets: &[TcpSocket], cancel: Option<&Cancel>, audit: Option<&AuditLog>) -> DestroyPass {
        self.engine.destroy(sockets, cancel, audit)
    }
}

/// The local ports HAProxy's processes listen on (a printed server port
/// may be an offset of one of them).
pub fn listening_ports(engine: &mut Engine, holders: &Holders) -> Result<Vec<u16>> {
    let listening = Query::new(Filter { states: StateSet::EMPTY.with(TcpState::Listen), ..Filter::default() })?;
    let mut ports: Vec<u16> =
        engine.collect(&listening)?.iter().filter(|s| holders.holder(s).is_some()).map(|s| s.local().port()).collect();
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(addr: &str, port: u16) -> ServerState {
        ServerState { backend: "be".into(), name: "h1".into(), addr: addr.parse().ok(), port, ..Default::default() }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_printed_port_may_be_an_offset_of_a_listening_port() {
        // `server h1 10.88.0.21:+1000` behind a frontend on 8004 prints port 1000.
        let h1 = server("10.88.0.21", 1000);
        assert_eq!(server_at(&h1, sa("10.88.0.21:1000"), &[8004]), Some(At::Exactly));
        assert_eq!(server_at(&h1, sa("10.88.0.21:9004"), &[8004]), Some(At::Maybe));
        assert_eq!(server_at(&h1, sa("10.88.0.21:7004"), &[8004]), Some(At::Maybe));
        assert_eq!(server_at(&h1, sa("10.88.0.21:9005"), &[8004]), None);
        assert_eq!(server_at(&h1, sa("10.88.0.22:9004"), &[8004]), None);
        assert_eq!(server_at(&h1, sa("10.88.0.21:1500"), &[8004, 500]), Some(At::Maybe));
    }

    #[test]
    fn port_zero_is_any_port_and_no_address_is_nowhere() {
        let p0 = server("10.88.0.21", 0);
        assert_eq!(server_at(&p0, sa("10.88.0.21:9005"), &[]), Some(At::Exactly));
        assert_eq!(Place::of(sa("10.88.0.21:0")), Place { ip: "10.88.0.21".parse().unwrap(), port: None });
        assert_eq!(server_at(&server("-", 80), sa("10.88.0.21:80"), &[]), None);
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let v6 = server("fd77::21", 9007);
        assert_eq!(server_at(&v6, sa("[fd77::21]:9007"), &[]), Some(At::Exactly));
        assert_eq!(server_at(&v6, sa("[fd77::22]:9007"), &[]), None);
        let v4 = server("10.88.0.21", 9004);
        assert_eq!(server_at(&v4, sa("[::ffff:10.88.0.21]:9004"), &[]), Some(At::Exactly));
        assert_eq!(Place::of(sa("[fd77::21]:9007")).to_string(), "[fd77::21]:9007");
        assert_eq!(Place::of(sa("[fd77::21]:0")).to_string(), "[fd77::21]:*");
    }

    #[test]
    fn places_hold_exactly_what_they_name_and_filter_a_superset() {
        let mut ps = Places::default();
        assert!(ps.add(Place::of(sa("10.88.0.22:9004"))));
        assert!(ps.add(Place::of(sa("10.88.0.21:9004"))));
        assert!(!ps.add(Place::of(sa("10.88.0.21:9004"))));
        assert!(ps.add(Place::of(sa("10.88.0.23:80"))));
        assert!(ps.holds(sa("10.88.0.21:9004")));
        assert!(ps.holds(sa("[::ffff:10.88.0.21]:9004")));
        // The filter's cross product has 10.88.0.21:80; the places do not.
        assert!(!ps.holds(sa("10.88.0.21:80")));
        let f = ps.filter();
        assert_eq!((f.dst.len(), f.dport.len()), (3, 2));
        // Any port of an address covers its single ports, and the filter's ports.
        assert!(ps.add(Place::of(sa("10.88.0.21:0"))));
        assert!(!ps.add(Place::of(sa("10.88.0.21:1"))));
        assert!(ps.holds(sa("10.88.0.21:80")));
        assert!(ps.filter().dport.is_empty());
        assert_eq!(serde_json::to_value(&ps).unwrap(), serde_json::json!(["10.88.0.22:9004", "10.88.0.23:80", "10.88.0.21:*"]));
    }
}
