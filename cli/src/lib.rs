//! The `ferrolb` command-line tool's logic, without I/O.

pub mod migrate;
pub mod migrate_bgp;
pub mod status;
