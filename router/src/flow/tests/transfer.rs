//! Bytes arrive intact: 64 MiB both ways at once over 1, 2 and 3 hops, half-close with the
//! reply still flowing back, and a backend that speaks first.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

const BIG: usize = 64 << 20;

/// Sends `data` and reads the echo at the same time; returns the digest of what came back.
async fn echo_both_ways(addr: SocketAddr, data: Arc<Vec<u8>>) -> Vec<u8> {
    let c = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = c.into_split();
    let send = tokio::spawn(async move {
        for chunk in data.chunks(256 * 1024) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0;
    loop {
        let k = r.read(&mut buf).await.unwrap();
        if k == 0 {
            break;
        }
        n += k;
        ctx.update(&buf[..k]);
    }
    send.await.unwrap();
    assert_eq!(n, BIG, "echoed byte count");
    ctx.finish().as_ref().to_vec()
}

async fn big_transfers(transport: TransportChoice) {
    let net = chain(4, transport).await;
    let echo_addr = backend(echo).await;
    net.routers[0].set_connectors(vec![connector("echo", "echo", echo_addr)]);
    for i in 1..4 {
        net.routers[i].set_listeners(vec![listener("echo", "echo")]);
    }
    converge(&net).await;
    let data = Arc::new(pattern(1, BIG));
    let want = sha256(&data);
    for hops in 1..4 {
        wait_active(&net.routers[hops], "echo").await;
        let addr = listener_addr(&net.routers[hops], "echo");
        let t0 = std::time::Instant::now();
        let got = within(
            Duration::from_secs(300),
            "a 64 MiB echo",
            echo_both_ways(addr, data.clone()),
        )
        .await;
        assert!(got == want, "{hops} hops: echoed bytes differ");
        tracing::info!(hops, elapsed = ?t0.elapsed(), "64 MiB each way");
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_64_mib_both_ways_over_1_2_and_3_hops() {
    big_transfers(TransportChoice::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_64_mib_both_ways_over_1_2_and_3_hops() {
    big_transfers(TransportChoice::Tls).await;
}

const REPLY: usize = (1 << 20) + 3;

async fn half_close(transport: TransportChoice) {
    let net = chain(4, transport).await;
    let addr = backend(|s| digest_then_reply(s, REPLY)).await;
    net.routers[0].set_connectors(vec![connector("digest", "digest", addr)]);
    net.routers[1].set_listeners(vec![listener("digest", "digest")]);
    net.routers[3].set_listeners(vec![listener("digest", "digest")]);
    converge(&net).await;
    for hops in [1, 3] {
        wait_active(&net.routers[hops], "digest").await;
        let addr = listener_addr(&net.routers[hops], "digest");
        for size in [0usize, 1, 40_019, 8 << 20] {
            let data = pattern(size as u64 + 11, size);
            let run = async {
                let mut c = TcpStream::connect(addr).await.unwrap();
                c.write_all(&data).await.unwrap();
                c.shutdown().await.unwrap();
                let mut back = Vec::new();
                // read_to_end returns only at EOF: the reply ended cleanly.
                c.read_to_end(&mut back).await.unwrap();
                back
            };
            let back = within(Duration::from_secs(120), "a half-closed exchange", run).await;
            let nl = back.iter().position(|b| *b == b'\n').expect("a reply line");
            let line = std::str::from_utf8(&back[..nl]).unwrap();
            let hex: String = sha256(&data).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(line, format!("{size} {hex}"), "{hops} hops, {size} bytes");
            assert!(
                back[nl + 1..] == pattern(7, REPLY)[..],
                "{hops} hops, {size} bytes: the reply differs ({} bytes)",
                back.len() - nl - 1
            );
        }
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_half_close_carries_the_fin_and_the_whole_reply() {
    half_close(TransportChoice::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_half_close_carries_the_fin_and_the_whole_reply() {
    half_close(TransportChoice::Tls).await;
}

const BANNER: &[u8] = b"220 skiff test server ready\r\n";

async fn banner_then_echo(mut s: TcpStream) {
    if s.write_all(BANNER).await.is_ok() {
        echo(s).await;
    }
}

async fn server_speaks_first(transport: TransportChoice) {
    // Listener at the acceptor end of the chain, connector three hops away: flows also go
    // from acceptors to dialers.
    let net = chain(4, transport).await;
    let addr = backend(banner_then_echo).await;
    net.routers[3].set_connectors(vec![connector("smtp", "smtp", addr)]);
    net.routers[0].set_listeners(vec![listener("smtp", "smtp")]);
    converge(&net).await;
    wait_active(&net.routers[0], "smtp").await;
    let addr = listener_addr(&net.routers[0], "smtp");
    let run = async {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut banner = vec![0u8; BANNER.len()];
        c.read_exact(&mut banner).await.unwrap();
        assert_eq!(banner, BANNER);
        c.write_all(b"HELO x\r\n").await.unwrap();
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"HELO x\r\n");
    };
    within(Duration::from_secs(30), "a banner exchange", run).await;
    net.shutdown().await;
}

#[tokio::test]
async fn quic_server_speaks_first() {
    server_speaks_first(TransportChoice::Quic).await;
}

#[tokio::test]
async fn tls_server_speaks_first() {
    server_speaks_first(TransportChoice::Tls).await;
}

/// Many flows at once, each a run of small request/answer exchanges of its own bytes: copy
/// buffers pass from flow to flow and the link batches the frames of many flows into one
/// write, and no flow may ever see another's bytes or lose one of its own.
async fn many_small_exchanges(transport: TransportChoice) {
    const FLOWS: u64 = 64;
    const EXCHANGES: usize = 50;
    let net = chain(2, transport).await;
    let echo_addr = backend(echo).await;
    net.routers[1].set_connectors(vec![connector("echo", "echo", echo_addr)]);
    net.routers[0].set_listeners(vec![listener("echo", "echo")]);
    converge(&net).await;
    wait_active(&net.routers[0], "echo").await;
    let addr = listener_addr(&net.routers[0], "echo");
    let flows = (0..FLOWS).map(|seed| {
        tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let data = pattern(seed + 1, 300 * EXCHANGES);
            let mut back = vec![0u8; 300];
            for i in 0..EXCHANGES {
                // 1 to 300 bytes, a different size for every exchange and flow.
                let n = 1 + (i * 37 + seed as usize * 11) % 300;
                let msg = &data[i * 300..i * 300 + n];
                c.write_all(msg).await.unwrap();
                c.read_exact(&mut back[..n]).await.unwrap();
                assert_eq!(&back[..n], msg, "flow {seed}, exchange {i}: wrong bytes");
            }
        })
    });
    let all = futures_util::future::join_all(flows);
    for r in within(Duration::from_secs(120), "64 flows of 50 exchanges", all).await {
        r.unwrap();
    }
    net.shutdown().await;
}

// Several worker threads: frames arrive while the link's driver holds its flushes, and copy
// buffers move between the threads' stocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quic_many_small_exchanges_stay_apart() {
    many_small_exchanges(TransportChoice::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_many_small_exchanges_stay_apart() {
    many_small_exchanges(TransportChoice::Tls).await;
}
