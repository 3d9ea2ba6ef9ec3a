//! The library as someone else's CI uses it: examples/reconnect.rs cuts a
//! service's connections to its database in a private namespace; the service
//! must see the abort and reconnect.

#[macro_use]
mod common;

#[path = "../examples/reconnect.rs"]
mod reconnect;

#[test]
fn a_service_sees_the_reset_and_reconnects() {
    require!(Netns);
    let (seen, destroyed) = reconnect::scenario().unwrap();
    // The service's one connection (the database's end has another peer port).
    assert_eq!(destroyed, 1, "{seen:?}");
    assert_eq!(seen.errors.first(), Some(&std::io::ErrorKind::ConnectionAborted), "{seen:?}");
    assert!(seen.connects >= 2, "{seen:?}");
}
