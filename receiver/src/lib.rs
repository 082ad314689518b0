//! walship-receiver as a library: the binary (`main.rs`) parses the command line and calls the
//! entry points here; tests drive them in process (`serve::run` on port 0).
//!
//! Floors, top down: the entry points `serve`, `restore`, `promote`, `status`, `certs`, `cleanup`
//! (one per subcommand) use `store` (the archive directory) and `standby` (talking to the standby
//! PostgreSQL), which use `walship_common`. `error` holds the crate's one error enum.

pub mod certs;
pub mod cleanup;
pub mod error;
pub mod promote;
pub mod restore;
pub mod serve;
pub mod standby;
pub mod status;
pub mod store;
