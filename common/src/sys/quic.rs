//! What quinn reports about a connection, turned into the pure core's terms.

use crate::handshake::{HandshakeFailure, Origin};

/// The TLS alert a connection ended with (QUIC "crypto error" codes 0x100-0x1ff: certificate
/// refused, no certificate, ALPN mismatch), and who raised it: our own TLS stack (quinn's
/// `TransportError`) or the peer (`ConnectionClosed`). `None` when the peer simply left or the
/// connection ended for another reason.
pub fn tls_failure(e: &quinn::ConnectionError) -> Option<HandshakeFailure> {
    match e {
        quinn::ConnectionError::TransportError(t) => {
            HandshakeFailure::from_quic_code(Origin::Local, u64::from(t.code))
        }
        quinn::ConnectionError::ConnectionClosed(c) => {
            HandshakeFailure::from_quic_code(Origin::Peer, u64::from(c.error_code))
        }
        _ => None,
    }
}
