//! Free loopback ports. The OS picks (bind port 0), we release it and hand the number on; the
//! window in which another test could take it is small, and every scenario picks its own.

use std::net::{TcpListener, UdpSocket};

/// A TCP port on 127.0.0.1 that was free a moment ago (used for PostgreSQL's port number).
pub fn free_tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 (TCP)");
    l.local_addr().expect("local addr").port()
}

/// A UDP port on 127.0.0.1 that was free a moment ago (QUIC runs over UDP).
pub fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 (UDP)");
    s.local_addr().expect("local addr").port()
}
