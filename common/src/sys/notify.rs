//! systemd readiness (`Type=notify`): `READY=1` once the program serves, `STOPPING=1` when it
//! begins to stop. Without `NOTIFY_SOCKET` (not started by systemd) both do nothing.

use sd_notify::NotifyState;

/// Tell systemd the service is ready (bound and serving).
pub fn ready() {
    send(NotifyState::Ready);
}

/// Tell systemd the service is stopping.
pub fn stopping() {
    send(NotifyState::Stopping);
}

fn send(state: NotifyState) {
    // Keep NOTIFY_SOCKET: STOPPING=1 comes later through the same socket.
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!("could not notify systemd (NOTIFY_SOCKET): {e}");
    }
}
