//! TCP relays between a dialing site and an issuer for the rotation tests: a slow path, and
//! one that loses the issuer's answer.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A TCP relay on loopback to `to` that holds each connection `delay` before relaying (a
/// slow network path); its threads end on drop.
pub struct SlowRelay {
    pub port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl SlowRelay {
    pub fn start(to: String, delay: Duration) -> SlowRelay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let accept = std::thread::spawn(move || {
            let mut threads = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                let Ok((client, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                std::thread::sleep(delay);
                let Ok(server) = TcpStream::connect(&to) else {
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                for (mut from, mut into) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let stop3 = stop2.clone();
                    threads.push(std::thread::spawn(move || {
                        from.set_read_timeout(Some(Duration::from_millis(100)))
                            .unwrap();
                        let mut buf = [0u8; 16 * 1024];
                        while !stop3.load(Ordering::Relaxed) {
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if into.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = into.shutdown(std::net::Shutdown::Write);
                    }));
                }
            }
            for t in threads {
                let _ = t.join();
            }
        });
        SlowRelay {
            port,
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for SlowRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// A TCP relay on loopback to `to` for one connection that passes the TLS handshake and the
/// client's request to the server, then cuts the client off before any answer: the request
/// reached the issuer, the answer was lost. Its thread ends by itself (bounded).
pub fn answer_losing_relay(to: String) -> (u16, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        l.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match l.accept() {
                Ok((c, _)) => break c,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => return,
            }
        };
        client.set_nonblocking(false).unwrap();
        let mut server = TcpStream::connect(&to).unwrap();
        let mut back_from = server.try_clone().unwrap();
        let mut back_to = client.try_clone().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let cut2 = cut.clone();
        // Server to client until the request went through.
        let back = std::thread::spawn(move || {
            back_from
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            let mut buf = [0u8; 16 * 1024];
            let until = Instant::now() + Duration::from_secs(20);
            while Instant::now() < until {
                match back_from.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        if cut2.load(Ordering::Relaxed) {
                            return;
                        }
                        let _ = back_to.write_all(&buf[..n]);
                    }
                    Err(_) => {}
                }
            }
        });
        // Client to server: past the handshake (ClientHello, Finished: well under 1000 bytes)
        // comes the request (its CSR alone is more); then the client is cut off.
        let mut client = client;
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut sent = 0usize;
        let mut buf = [0u8; 16 * 1024];
        while sent < 1000 {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    sent += n;
                    if sent >= 1000 {
                        cut.store(true, Ordering::Relaxed);
                    }
                    server.write_all(&buf[..n]).unwrap();
                }
            }
        }
        let _ = client.shutdown(std::net::Shutdown::Both);
        drop(client);
        // Let the issuer read the request and answer into the void.
        std::thread::sleep(Duration::from_millis(500));
        let _ = server.shutdown(std::net::Shutdown::Both);
        let _ = back.join();
    });
    (port, t)
}
