//! Measures single-stream throughput of the two candidate TLS/TCP link multiplexers, h2 and
//! yamux, on loopback: over plain TCP (the multiplexer alone) and over TLS 1.3 with the link
//! configurations from skiff-certs (what a link runs).
//!
//! Run: `cargo run --release -p skiff-router --example mux_choice [MiB]`

use std::time::Instant;

use bytes::Bytes;
use skiff_router::link::mux::{MuxConnection, YamuxConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 64 * 1024;

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

async fn pair(tls: bool) -> (Box<dyn Io>, Box<dyn Io>) {
    let (a, b) = tcp_pair().await;
    if !tls {
        return (Box::new(a), Box::new(b));
    }
    use skiff_certs::{SiteCa, SiteId};
    let (ida, idb) = (SiteId::random(), SiteId::random());
    let (ca_a, ca_b) = (
        SiteCa::generate("a", ida).unwrap(),
        SiteCa::generate("b", idb).unwrap(),
    );
    let server_cert = ca_b.issue_router_cert(idb, &[]).unwrap();
    let (csr, key) = skiff_certs::generate_link_csr(ida, "a").unwrap();
    let (_, client_cert) = ca_b
        .sign_link_csr(&csr, std::time::Duration::from_secs(600))
        .unwrap();
    let server = skiff_certs::link_server_config(
        &server_cert.cert_pem,
        server_cert.key_pem.as_deref().unwrap(),
        ca_b.cert_pem(),
        &[skiff_certs::ALPN_LINK],
    )
    .unwrap();
    let client =
        skiff_certs::link_client_config(&client_cert.cert_pem, &key, ca_b.cert_pem(), idb).unwrap();
    let _ = ca_a;
    let name = rustls_pki_types::ServerName::try_from(idb.server_name()).unwrap();
    let (c, s) = tokio::join!(
        tokio_rustls::TlsConnector::from(client).connect(name, a),
        tokio_rustls::TlsAcceptor::from(server).accept(b)
    );
    (Box::new(c.unwrap()), Box::new(s.unwrap()))
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (a, b) = (a.unwrap(), b.unwrap().0);
    a.set_nodelay(true).unwrap();
    b.set_nodelay(true).unwrap();
    (a, b)
}

async fn yamux(total: usize, tls: bool) -> f64 {
    let (a, b) = pair(tls).await;
    let dialer = YamuxConnection::start(a, true);
    let acceptor = YamuxConnection::start(b, false);
    let start = Instant::now();
    let send = async {
        let mut s = dialer.open_stream().await.unwrap();
        let chunk = vec![7u8; CHUNK];
        let mut sent = 0;
        while sent < total {
            s.writer.write_all(&chunk).await.unwrap();
            sent += CHUNK;
        }
        s.writer.shutdown().await.unwrap();
        s
    };
    let recv = async {
        let mut s = acceptor.accept_stream().await.unwrap();
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0;
        loop {
            let n = s.reader.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        got
    };
    let (_s, got) = tokio::join!(send, recv);
    assert_eq!(got, total);
    got as f64 / start.elapsed().as_secs_f64() / 1e6
}

async fn h2(total: usize, tls: bool) -> f64 {
    let (a, b) = pair(tls).await;
    // Windows as large as yamux may auto-tune to on loopback, so flow control is not the limit.
    let window = 16 * 1024 * 1024;
    let server = tokio::spawn(async move {
        let mut conn = h2::server::Builder::new()
            .initial_window_size(window)
            .initial_connection_window_size(window)
            .max_frame_size(1 << 20)
            .handshake::<_, Bytes>(b)
            .await
            .unwrap();
        let (req, _respond) = conn.accept().await.unwrap().unwrap();
        tokio::spawn(async move { while conn.accept().await.is_some() {} });
        let mut body = req.into_body();
        let mut got = 0;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            got += chunk.len();
            body.flow_control().release_capacity(chunk.len()).unwrap();
        }
        got
    });
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(window)
        .max_frame_size(1 << 20)
        .handshake::<_, Bytes>(a)
        .await
        .unwrap();
    tokio::spawn(conn);
    let start = Instant::now();
    let mut client = client.ready().await.unwrap();
    let req = http::Request::post("http://link/").body(()).unwrap();
    let (_resp, mut send) = client.send_request(req, false).unwrap();
    let chunk = Bytes::from(vec![7u8; CHUNK]);
    let mut sent = 0;
    while sent < total {
        send.reserve_capacity(CHUNK.min(total - sent));
        loop {
            let cap = std::future::poll_fn(|cx| send.poll_capacity(cx))
                .await
                .unwrap()
                .unwrap();
            if cap > 0 {
                break;
            }
        }
        let cap = send.capacity().min(CHUNK).min(total - sent);
        send.send_data(chunk.slice(..cap), false).unwrap();
        sent += cap;
    }
    send.send_data(Bytes::new(), true).unwrap();
    let got = server.await.unwrap();
    assert_eq!(got, total);
    got as f64 / start.elapsed().as_secs_f64() / 1e6
}

#[tokio::main]
async fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let total = mib * 1024 * 1024;
    skiff_certs::install_crypto_provider();
    for tls in [false, true] {
        let over = if tls { "TLS 1.3/TCP" } else { "plain TCP" };
        for round in 1..=3 {
            let y = yamux(total, tls).await;
            let h = h2(total, tls).await;
            println!(
                "{over}, round {round}: {mib} MiB, 1 stream: yamux {y:.0} MB/s, h2 {h:.0} MB/s"
            );
        }
    }
}
