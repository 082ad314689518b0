//! End-to-end scenarios for walship: real PostgreSQL clusters, the real `walship-sender` and
//! `walship-receiver` binaries, one module per scenario.
//!
//! Build the binaries first: `cargo build --workspace --bins && cargo test --workspace`.
//! See the harness (`walship_tests`) for how PostgreSQL and the binaries are found.

mod bad_client_cert;
mod bad_names;
mod certs_refuses_overwrite;
mod conflicting_content;
mod daemon;
mod example_configs;
mod failover;
mod faults;
mod fencing;
mod foreign_cluster;
mod fsync_order;
mod hostile;
mod issue10_client_subject;
mod issue10_daemon_socket;
mod issue10_history;
mod issue10_promote;
mod issue10_refusal_leak;
mod issue10_restore;
mod issue10_serve_lock;
mod issue10_slots;
mod issue10_tls_advice;
mod issue11_check;
mod issue11_cleanup;
mod issue11_metrics;
mod issue11_sighup;
mod issue11_status_health;
mod issue11_valve;
mod issue12_basebackup;
mod issue12_way_back;
mod issue13_compression;
mod issue13_faults;
mod issue13_hostile_appends;
mod issue13_loss_window;
mod issue13_partial;
mod issue13_seal;
mod issue14_clusters;
mod issue14_fanout;
mod issue14_objstore;
mod key_permissions;
mod leftovers_cleaned;
mod promote_timeout;
mod receiver_down;
mod segment_sizes;
mod server_name_checked;
mod ship_and_replay;
mod soak;
mod status_json;
mod warm_standby;

use std::path::PathBuf;

use walship_tests::walship::{receiver_config, sender_for};
use walship_tests::{CertSet, Receiver, ReceiverSetup, Scenario};

/// A scenario with certificates, a receiver serving (not pinned to a data directory) and a
/// sender configured for it. Fields drop in order: the receiver stops before the report.
pub struct Served {
    pub rx: Receiver,
    pub setup: ReceiverSetup,
    pub sender: PathBuf,
    pub certs: CertSet,
    pub sc: Scenario,
}

impl Served {
    pub fn start(name: &str) -> Served {
        let sc = Scenario::new(name);
        let certs = CertSet::create(&sc, "certs");
        let setup = receiver_config(&sc, "receiver", &certs, None);
        let sender = sender_for(&sc, "sender", &setup, &certs);
        let rx = Receiver::spawn(&sc, &setup.config, "receiver");
        Served {
            rx,
            setup,
            sender,
            certs,
            sc,
        }
    }
}
