//! What `--version` prints after the program name: the release and the wire protocol it speaks,
//! so an operator can tell from both hosts whether a sender and a receiver can talk.

use std::sync::LazyLock;

use crate::proto::PROTOCOL_VERSION;

/// `0.1.0 (protocol 4)`: clap prints it as `walship-receiver 0.1.0 (protocol 4)`.
pub static LINE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} (protocol {PROTOCOL_VERSION})",
        env!("CARGO_PKG_VERSION")
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_release_and_protocol() {
        assert_eq!(
            *LINE,
            format!(
                "{} (protocol {PROTOCOL_VERSION})",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert!(LINE.starts_with(env!("CARGO_PKG_VERSION")));
    }
}
