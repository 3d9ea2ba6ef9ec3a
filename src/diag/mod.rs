//! Everything that knows the kernel's sock_diag bytes, and nothing else.

pub mod bytecode;
pub mod socket;
pub mod wire;

pub use socket::{DestroyResult, DiagSocket, DumpStatus};
