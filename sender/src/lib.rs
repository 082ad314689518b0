//! walship-sender as a library: the binary (`main.rs`) parses the command line and calls the
//! entry points here (`push`, `daemon`); tests drive them in process.

pub mod daemon;
pub mod error;
pub mod handoff;
pub mod push;
