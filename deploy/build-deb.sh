#!/usr/bin/env bash
# Build the Debian package walship_<version>-1_<arch>.deb (both binaries, the systemd units,
# example configs in /etc/walship, man pages, bash/zsh/fish completions):
#
#   bash deploy/build-deb.sh
#
# Installs cargo-deb first if it is not on PATH. Prints the path of the .deb on its last line
# (under target/debian/, or $CARGO_TARGET_DIR/debian/). Install with `dpkg -i`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "build-deb: installing cargo-deb (cargo install --locked cargo-deb)"
    cargo install --locked cargo-deb
fi

# cargo-deb's dependency detection ($auto) uses dpkg-shlibdeps when present (dpkg-dev).
echo "build-deb: release binaries (LTO, stripped)"
cargo build --release --locked -p walship-receiver -p walship-sender --bins

# Man pages and completions come from the clap definitions, into packaging/generated where
# packaging/Cargo.toml's assets look for them.
echo "build-deb: man pages and completions"
rm -rf packaging/generated
cargo run --locked -q -p walship-packaging -- packaging/generated

echo "build-deb: package"
cargo deb --locked -p walship-packaging --no-build
