//! Why a TLS handshake failed, told from what QUIC reports (who closed, and the TLS alert),
//! and the advice that names the side at fault and the setting to check. Pure: the drivers
//! turn quinn's `ConnectionError` into a [`HandshakeFailure`].

/// Which end of the handshake is explaining a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Sender,
    Receiver,
}

/// Who ended a failed handshake. QUIC tells: quinn reports an alert raised by our own TLS stack
/// as `ConnectionError::TransportError` and one received from the peer as
/// `ConnectionError::ConnectionClosed`. The error text cannot tell: rustls words both as
/// "invalid peer certificate", on whichever side judged the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// This side refused the peer (its certificate, or the handshake).
    Local,
    /// The peer refused this side and sent the alert.
    Peer,
}

/// A handshake that ended with a TLS alert: who sent it and which alert. rustls picks the alert
/// from its typed error (`CertificateError::UnknownIssuer` -> unknown_ca, `BadSignature` ->
/// decrypt_error, `Expired`/`NotValidYet` -> certificate_expired, `NotValidForName` ->
/// bad_certificate, `InvalidPurpose` -> unsupported_certificate, no client certificate ->
/// certificate_required), and only the alert crosses QUIC, so the alert is what both sides
/// classify by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeFailure {
    pub origin: Origin,
    pub alert: rustls::AlertDescription,
}

impl HandshakeFailure {
    /// From a QUIC transport error code: QUIC carries a TLS alert as code 0x100 + alert
    /// (RFC 9001, section 4.8, "crypto error"). Any other code is not a TLS failure.
    pub fn from_quic_code(origin: Origin, code: u64) -> Option<Self> {
        let alert = code.checked_sub(0x100).filter(|a| *a <= 0xff)?;
        Some(HandshakeFailure {
            origin,
            alert: rustls::AlertDescription::from(alert as u8),
        })
    }

    /// What to do, from `side`'s point of view: which side's certificate was refused and which
    /// setting to check. `server_name` is the sender's (ignored on the receiver).
    pub fn advice(&self, side: Side, server_name: &str) -> String {
        use rustls::AlertDescription as A;
        let alert = self.alert;
        match (side, self.origin, alert) {
            // Every walship release offers the same ALPN id (protocol versions are told apart
            // later, in the frame preamble): a peer without it is not walship at all.
            (Side::Sender, _, A::NoApplicationProtocol) => format!(
                "the receiver does not offer ALPN {}, which every walship-receiver release offers: check that `receiver` points at walship-receiver serve and not another service",
                String::from_utf8_lossy(crate::proto::ALPN)
            ),
            (Side::Receiver, _, A::NoApplicationProtocol) => format!(
                "the client does not offer ALPN {}, which every walship-sender release offers: it is not walship-sender; check what connects to this port",
                String::from_utf8_lossy(crate::proto::ALPN)
            ),
            // The sender judged the receiver's certificate against `ca` and `server_name`.
            (Side::Sender, Origin::Local, A::UnknownCA | A::DecryptError) => format!(
                "the receiver's certificate is not signed by the CA in `ca` ({alert:?}): set `ca` to the ca.pem made with the receiver's certificates"
            ),
            (Side::Sender, Origin::Local, A::BadCertificate) => format!(
                "the receiver's certificate is not valid for `server_name` {server_name:?} ({alert:?}): set `server_name` to a name the receiver's certificate was made for"
            ),
            (Side::Sender, Origin::Local, A::CertificateExpired) => format!(
                "the receiver's certificate has expired or is not valid yet ({alert:?}): make new receiver certificates (walship-receiver certs) or check the clocks of both hosts"
            ),
            (Side::Sender, Origin::Local, A::UnsupportedCertificate) => format!(
                "the receiver's certificate is not made for a server ({alert:?}): give the receiver the server.pem made by walship-receiver certs"
            ),
            (Side::Sender, Origin::Local, _) => format!(
                "this sender refused the receiver's handshake ({alert:?}): check `ca` and `server_name` against the receiver's certificate"
            ),
            // The receiver judged our client certificate against its `client_ca`.
            (Side::Sender, Origin::Peer, A::UnknownCA | A::DecryptError) => format!(
                "the receiver refused our client certificate as not signed by its `client_ca` ({alert:?}): `cert`/`key` must be signed by the CA in the receiver's `client_ca`"
            ),
            (Side::Sender, Origin::Peer, A::CertificateExpired) => format!(
                "the receiver refused our client certificate as expired or not valid yet ({alert:?}): renew `cert`/`key` or check the clocks of both hosts"
            ),
            (Side::Sender, Origin::Peer, A::CertificateRequired) => format!(
                "the receiver requires a client certificate and got none ({alert:?}): set `cert`/`key` in the sender config"
            ),
            (Side::Sender, Origin::Peer, _) => format!(
                "the receiver refused our client certificate ({alert:?}): check `cert`/`key` against the receiver's `client_ca`"
            ),
            // The receiver judged the client's certificate against `client_ca`.
            (Side::Receiver, Origin::Local, A::UnknownCA | A::DecryptError) => format!(
                "the client's certificate is not signed by this receiver's `client_ca` ({alert:?}): give the sender a `cert`/`key` signed by that CA, or set `client_ca` to the CA that signed it"
            ),
            (Side::Receiver, Origin::Local, A::CertificateExpired) => format!(
                "the client's certificate has expired or is not valid yet ({alert:?}): renew the sender's `cert`/`key` or check the clocks of both hosts"
            ),
            (Side::Receiver, Origin::Local, A::CertificateRequired) => format!(
                "the client presented no certificate ({alert:?}): set `cert`/`key` in the sender config"
            ),
            (Side::Receiver, Origin::Local, A::UnsupportedCertificate) => format!(
                "the client's certificate is not made for a client ({alert:?}): give the sender the client.pem made by walship-receiver certs"
            ),
            (Side::Receiver, Origin::Local, _) => format!(
                "this receiver refused the client's handshake ({alert:?}): check the sender's `cert`/`key` against `client_ca`"
            ),
            // The client judged this receiver's certificate against its `ca` and `server_name`.
            (Side::Receiver, Origin::Peer, A::BadCertificate) => format!(
                "the client refused this receiver's certificate as not valid for the name it asked for ({alert:?}): check the sender's `server_name` against the names in this receiver's `cert`"
            ),
            (Side::Receiver, Origin::Peer, A::UnknownCA | A::DecryptError) => format!(
                "the client refused this receiver's certificate as not signed by the CA it trusts ({alert:?}): the sender's `ca` must be the CA that signed this receiver's `cert`"
            ),
            (Side::Receiver, Origin::Peer, A::CertificateExpired) => format!(
                "the client refused this receiver's certificate as expired or not valid yet ({alert:?}): renew `cert`/`key` here (walship-receiver certs) or check the clocks of both hosts"
            ),
            (Side::Receiver, Origin::Peer, _) => format!(
                "the client refused this receiver's certificate or aborted the handshake ({alert:?}): check the sender's `ca` and `server_name` against this receiver's `cert`"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_crypto_codes_are_tls_failures() {
        use Origin::*;
        assert_eq!(HandshakeFailure::from_quic_code(Local, 0x0a), None);
        assert_eq!(HandshakeFailure::from_quic_code(Peer, 0x200), None);
        let f = HandshakeFailure::from_quic_code(Peer, 0x130).expect("crypto error");
        assert_eq!(f.origin, Peer);
        assert_eq!(f.alert, rustls::AlertDescription::UnknownCA);
    }

    /// Each case names the side at fault and the setting to check, and never the other side.
    #[test]
    fn handshake_failures_get_the_right_advice() {
        use Origin::*;
        use Side::*;
        let advice = |side, origin, code: u64| {
            HandshakeFailure::from_quic_code(origin, 0x100 + code)
                .expect("crypto error")
                .advice(side, "other.example")
        };
        let check = |text: String, must: &[&str], must_not: &[&str]| {
            for m in must {
                assert!(text.contains(m), "{text:?} should say {m:?}");
            }
            for m in must_not {
                assert!(!text.contains(m), "{text:?} should not say {m:?}");
            }
        };
        // (a) The sender's client certificate is from another CA (unknown_ca; decrypt_error
        // when both CAs have the same name, as every `certs` CA does).
        for code in [48, 51] {
            check(
                advice(Sender, Peer, code),
                &[
                    "receiver refused our client certificate",
                    "`client_ca`",
                    "`cert`",
                ],
                &["receiver's certificate", "`ca`"],
            );
            check(
                advice(Receiver, Local, code),
                &["client's certificate is not signed by", "`client_ca`"],
                &["receiver's certificate"],
            );
        }
        // (b) Wrong server_name: the sender sends bad_certificate.
        check(
            advice(Sender, Local, 42),
            &["receiver's certificate", "`server_name`", "other.example"],
            &["client"],
        );
        check(
            advice(Receiver, Peer, 42),
            &[
                "client refused this receiver's certificate",
                "`server_name`",
            ],
            &["client's certificate", "client_ca"],
        );
        // (c) The receiver's certificate is from another CA than the sender's `ca`.
        for code in [48, 51] {
            check(
                advice(Sender, Local, code),
                &["receiver's certificate is not signed by the CA in `ca`"],
                &["client"],
            );
            check(
                advice(Receiver, Peer, code),
                &[
                    "client refused this receiver's certificate",
                    "sender's `ca`",
                ],
                &["client's certificate", "client_ca"],
            );
        }
        // (d) Expired (or not yet valid) certificates, both ways.
        check(
            advice(Sender, Peer, 45),
            &[
                "receiver refused our client certificate as expired",
                "`cert`",
            ],
            &["receiver's certificate"],
        );
        check(
            advice(Receiver, Local, 45),
            &["client's certificate has expired", "`cert`"],
            &["receiver's certificate"],
        );
        check(
            advice(Sender, Local, 45),
            &["receiver's certificate has expired"],
            &["client"],
        );
        check(
            advice(Receiver, Peer, 45),
            &["client refused this receiver's certificate as expired"],
            &["client's certificate"],
        );
        // No client certificate; another protocol.
        check(
            advice(Receiver, Local, 116),
            &["client presented no certificate", "`cert`"],
            &[],
        );
        check(
            advice(Sender, Peer, 116),
            &["got none", "`cert`"],
            &["receiver's certificate"],
        );
        check(advice(Sender, Peer, 120), &["ALPN"], &["certificate"]);
        check(advice(Receiver, Local, 120), &["ALPN"], &["certificate"]);
    }
}
