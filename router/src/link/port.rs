//! The link port: one TCP socket (TLS links, token redemptions) and one UDP socket (QUIC
//! links) on the same port number, so a site opens one port number in its firewall.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};

use super::RouterError;

/// How often an ephemeral (port 0) binding is retried when the UDP port matching the TCP port
/// the OS chose is taken.
const EPHEMERAL_ATTEMPTS: usize = 8;

/// Binds TCP on `addr`, then UDP on the same IP and the port TCP got.
pub(crate) fn bind_link_port(addr: SocketAddr) -> Result<(TcpListener, UdpSocket), RouterError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        // std sets SO_REUSEADDR on Unix, so a restarted router rebinds despite TIME_WAIT.
        let tcp = TcpListener::bind(addr).map_err(|source| RouterError::Bind {
            proto: "TCP",
            addr,
            source,
        })?;
        let port = tcp.local_addr().map_err(|source| RouterError::Bind {
            proto: "TCP",
            addr,
            source,
        })?;
        let udp_addr = SocketAddr::new(addr.ip(), port.port());
        match UdpSocket::bind(udp_addr) {
            Ok(udp) => {
                super::quic::size_buffers(&udp);
                set_nonblocking(&tcp, &udp).map_err(|source| RouterError::Bind {
                    proto: "TCP",
                    addr,
                    source,
                })?;
                return Ok((tcp, udp));
            }
            Err(e)
                if addr.port() == 0
                    && e.kind() == io::ErrorKind::AddrInUse
                    && attempt < EPHEMERAL_ATTEMPTS =>
            {
                tracing::debug!(port = port.port(), "UDP port taken; trying another port");
            }
            Err(source) => {
                return Err(RouterError::Bind {
                    proto: "UDP",
                    addr: udp_addr,
                    source,
                });
            }
        }
    }
}

fn set_nonblocking(tcp: &TcpListener, udp: &UdpSocket) -> io::Result<()> {
    tcp.set_nonblocking(true)?;
    udp.set_nonblocking(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_binding_uses_one_port_number() {
        let (tcp, udp) = bind_link_port("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = tcp.local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert_eq!(udp.local_addr().unwrap().port(), port);
    }

    #[test]
    fn the_quic_socket_gets_the_large_buffers_the_kernel_allows() {
        let (_tcp, udp) = bind_link_port("127.0.0.1:0".parse().unwrap()).unwrap();
        let max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let want = max.min(super::super::quic::QUIC_SOCKET_BUFFER);
        // The kernel reports twice what it grants room for (its bookkeeping overhead); the
        // default (rmem_default, often equal to rmem_max) is reported doubled too, so only a
        // request up to the cap passes this.
        let got = socket2::SockRef::from(&udp).recv_buffer_size().unwrap();
        let default: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_default")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            got >= 2 * want,
            "receive buffer {got} bytes, rmem_max {max}"
        );
        if max > default {
            assert!(
                got > 2 * default,
                "receive buffer {got} bytes: the default {default}"
            );
        }
    }

    #[test]
    fn a_taken_udp_port_is_a_bind_error_naming_udp() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap();
        // The TCP side of that port number may be free; the UDP side is not.
        match bind_link_port(addr) {
            Err(RouterError::Bind { proto, .. }) => assert_eq!(proto, "UDP"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("bound a taken UDP port"),
        }
    }
}
