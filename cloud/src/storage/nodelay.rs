//! TCP_NODELAY on the PostgreSQL connections, which sqlx 0.9.0 no longer sets (transact-rs/sqlx#4335; fixed
//! upstream by #4336, not yet released). Without it, Nagle's algorithm holds a small write behind unacknowledged
//! data until the server's delayed ACK (40 ms on Linux): every ingest batch's `COPY … FROM STDIN` waited that long
//! before its CopyDone went out, about 55 ms per 2,000-row COPY instead of about 14 ms (docs/benchmarks.md). libpq
//! sets TCP_NODELAY on every connection for the same reason.
//!
//! sqlx gives no access to its socket, so after each new connection this finds the process's TCP sockets whose
//! peer is the database's port and sets the option on them. Setting TCP_NODELAY on any TCP socket is harmless,
//! so an unrelated socket to the same port number, or an fd reused between the scan and the call, costs nothing.
//! Remove this module when Cargo.lock has sqlx-core ≥ 0.9.1.

/// Sets TCP_NODELAY on this process's TCP sockets connected to `port`; returns how many it changed.
#[cfg(target_os = "linux")]
pub(super) fn set_on_connections_to(port: u16) -> usize {
    use std::os::fd::{BorrowedFd, RawFd};
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut changed = 0;
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: `fd` was open in this process a moment ago and is only borrowed for the next few calls, which
        // neither close it nor keep it. If another thread closed it in between, the calls fail with EBADF or, if
        // the number was reused, act on another descriptor: getsockopt/setsockopt of TCP_NODELAY, which cannot
        // corrupt anything (see the module documentation).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&borrowed);
        let to_port = socket
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| a.port() == port);
        if to_port
            && socket.tcp_nodelay().is_ok_and(|on| !on)
            && socket.set_tcp_nodelay(true).is_ok()
        {
            changed += 1;
        }
    }
    changed
}

/// Elsewhere there is no /proc to scan: Nagle stays on (correct, only slower).
#[cfg(not(target_os = "linux"))]
pub(super) fn set_on_connections_to(_port: u16) -> usize {
    0
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn sets_nodelay_only_on_sockets_to_the_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let port = listener.local_addr().expect("addr").port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        let other = std::net::TcpListener::bind("127.0.0.1:0").expect("other listener");
        let unrelated = std::net::TcpStream::connect(other.local_addr().expect("addr"))
            .expect("unrelated connect");
        assert!(
            !client.nodelay().expect("nodelay"),
            "Nagle is on by default"
        );
        assert_eq!(
            set_on_connections_to(port),
            1,
            "only the client's socket has that peer port"
        );
        assert!(client.nodelay().expect("nodelay"));
        assert!(
            !unrelated.nodelay().expect("nodelay"),
            "other peers are left alone"
        );
        assert!(
            !accepted.nodelay().expect("nodelay"),
            "the accepted side's peer is an ephemeral port"
        );
        assert_eq!(
            set_on_connections_to(port),
            0,
            "already set: nothing to change"
        );
    }
}
