//! walship-receiver as a library: the binary (`main.rs`) parses the command line and calls the
//! entry points here; tests drive them in process (`serve::run` on port 0).
//!
//! Floors, top down; a module uses only the floors below it, never one beside it:
//! 1. entry points, one per subcommand: [`serve`], [`restore`], [`promote`], [`status`],
//!    [`certs`], [`cleanup`], [`check`]. None calls another.
//! 2. [`store`] (the archive's WAL: storing verified uploads, listing, the newest segment),
//!    [`target`] (the standby's data directory as a base backup's target),
//!    [`objstore`] (the object-store tier: the bucket, the uploader, the upload record),
//!    [`standby`] (talking to the standby PostgreSQL) and [`metrics`] (`serve`'s metrics and
//!    their rendering for the `metrics_listen` endpoint);
//! 3. [`state`] (the archive's state files: pin, fence and its lock, restore records,
//!    `serve`'s lock), [`error`] (the crate's one error enum) and [`cli`] (the clap
//!    definitions of the command line, also read by the man page and completion generator);
//! 4. `walship_common`: the pure core (names, headers, formats of the state files, decisions)
//!    and its IO under `sys` (the durable-write helper, config, TLS files).

pub mod certs;
pub mod check;
pub mod cleanup;
pub mod cli;
pub mod error;
pub mod metrics;
pub mod objstore;
pub mod promote;
pub mod restore;
pub mod serve;
pub mod standby;
pub mod state;
pub mod status;
pub mod store;
pub mod target;
