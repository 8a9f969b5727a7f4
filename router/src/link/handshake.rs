//! The hello exchange on a link's control stream, dialer and acceptor side.
//!
//! The dialer opens the control stream (the first stream of the link) and sends its hello. The
//! acceptor checks, in this order: the major protocol version, that the hello names the site
//! of the client certificate, and the [`InboundPolicy`]. It answers with its own hello, or with
//! a `Refused` frame whose reason the dialer shows to its operator. The checks are the pure
//! function [`judge_hello`].

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use skiff_certs::SiteId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::InboundPolicy;
use super::explain::{AttemptError, Refusal, explain, policy_refusal};
use super::mux::{LinkStream, MuxConnection, StreamReader, StreamWriter};
use crate::wire::{ControlFrame, PROTOCOL_VERSION, ProtocolVersion, RouterMode};

/// How long a refusing side waits for the other to hang up after its last frame, so the
/// frame is delivered before the connection is torn down (QUIC drops unsent stream data on
/// close).
pub(crate) const LINGER: Duration = Duration::from_secs(2);

/// The framed control stream of a link.
pub(crate) struct ControlStream {
    reader: StreamReader,
    writer: StreamWriter,
    buf: BytesMut,
}

impl ControlStream {
    pub(crate) fn new(stream: LinkStream) -> Self {
        ControlStream {
            reader: stream.reader,
            writer: stream.writer,
            buf: BytesMut::with_capacity(256),
        }
    }

    /// Writes and flushes one frame.
    pub(crate) async fn send(&mut self, frame: &ControlFrame) -> io::Result<()> {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        self.writer.write_all(&out).await?;
        self.writer.flush().await
    }

    /// Half-closes our direction.
    pub(crate) async fn finish(&mut self) {
        let _ = self.writer.shutdown().await;
    }

    /// Reads the next frame; `Ok(None)` when the peer finished the stream cleanly.
    /// Cancel-safe: a partial frame stays buffered for the next call.
    pub(crate) async fn recv(&mut self) -> io::Result<Option<ControlFrame>> {
        loop {
            if let Some(frame) = ControlFrame::decode(&mut self.buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                return Ok(Some(frame));
            }
            if self.reader.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }
}

/// What a router says about itself in its hello.
#[derive(Clone, Debug)]
pub(crate) struct LocalHello {
    pub(crate) site_id: SiteId,
    pub(crate) site_name: String,
    pub(crate) mode: RouterMode,
    /// Always [`PROTOCOL_VERSION`] except in tests of version mismatch.
    pub(crate) version: ProtocolVersion,
}

impl LocalHello {
    /// Our hello; `cost` is the link's cost (the dialer's spec; 0 from the acceptor).
    fn frame(&self, cost: u32) -> ControlFrame {
        ControlFrame::Hello {
            version: self.version,
            site_id: *self.site_id.as_bytes(),
            site_name: self.site_name.clone(),
            mode: self.mode,
            cost,
        }
    }
}

/// What the peer said about itself.
#[derive(Clone, Debug)]
pub(crate) struct PeerHello {
    pub(crate) site_id: SiteId,
    pub(crate) site_name: String,
    #[allow(dead_code)] // the routing protocol learns modes from advertisements
    pub(crate) mode: RouterMode,
    /// The link cost the dialer configured (dialer side: our own spec's cost).
    pub(crate) cost: u32,
    /// The link protocol it speaks (what it can decode: see the driver's
    /// `frame_for_peer`).
    pub(crate) version: ProtocolVersion,
}

fn version_mismatch(peer: &str, theirs: ProtocolVersion, ours: ProtocolVersion) -> String {
    format!(
        "{peer} speaks link protocol {theirs}, this router {ours}; upgrade the older router so \
         both speak link protocol {}.x",
        theirs.major.max(ours.major)
    )
}

/// The acceptor's decision on a dialer's hello. `cert_site` is the site id of the client
/// certificate the dialer presented. `Err` holds the check and the reason sent in the
/// `Refused` frame.
pub(crate) fn judge_hello(
    version: ProtocolVersion,
    hello_site: SiteId,
    cert_site: SiteId,
    policy: &dyn InboundPolicy,
) -> Result<(), Refusal> {
    if version.major != PROTOCOL_VERSION.major {
        return Err(Refusal::new(
            "version",
            version_mismatch("the dialing router", version, PROTOCOL_VERSION),
        ));
    }
    if hello_site != cert_site {
        return Err(Refusal::new(
            "hello-site",
            format!(
                "the hello names site {hello_site} but the link certificate is for site \
                 {cert_site}: the dialing router runs with another site's folder or a copied \
                 link; link each site with its own token"
            ),
        ));
    }
    policy
        .admit(cert_site)
        .map_err(|reason| policy_refusal(policy, cert_site, reason))
}

fn protocol_error(endpoint: &str, what: &str) -> AttemptError {
    AttemptError::Network(format!("peer {endpoint} broke the link protocol: {what}"))
}

/// Dialer side: opens the control stream, sends our hello, reads the answer.
pub(crate) async fn dial_hello(
    conn: &dyn MuxConnection,
    local: &LocalHello,
    expected: SiteId,
    endpoint: &str,
    cost: u32,
) -> Result<(ControlStream, PeerHello), AttemptError> {
    let io_err = |e: io::Error| explain(&e, endpoint, expected);
    let mut control = ControlStream::new(conn.open_stream().await.map_err(io_err)?);
    control.send(&local.frame(cost)).await.map_err(io_err)?;
    let answer = match control.recv().await {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Err(None),
        // yamux streams report a lost connection as a reset or an abort.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ) =>
        {
            Err(Some(e))
        }
        // A peer that refused at the transport level shows up here (QUIC close reason).
        Err(e) => return Err(io_err(e)),
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            // yamux hides a TLS alert (the peer rejected our certificate) behind the end of
            // its streams; the connection knows the real cause once it has closed.
            let _ = tokio::time::timeout(LINGER, conn.closed()).await;
            if let Some(failure) = conn.failure() {
                return Err(explain(&*failure, endpoint, expected));
            }
            return Err(match e {
                Some(e) => io_err(e),
                None => AttemptError::Network(format!(
                    "peer {endpoint} hung up during the hello exchange"
                )),
            });
        }
    };
    match answer {
        ControlFrame::Hello {
            version,
            site_id,
            site_name,
            mode,
            cost: _,
        } => {
            let site_id = SiteId::from_bytes(site_id);
            if version.major != local.version.major {
                let reason = version_mismatch(&format!("peer {endpoint}"), version, local.version);
                let _ = control
                    .send(&ControlFrame::Close {
                        reason: reason.clone(),
                    })
                    .await;
                return Err(AttemptError::Refused(reason));
            }
            if site_id != expected {
                return Err(AttemptError::Refused(format!(
                    "peer {endpoint} says it is site {site_id}, but the link names site {expected}"
                )));
            }
            Ok((
                control,
                PeerHello {
                    site_id,
                    site_name,
                    mode,
                    cost,
                    version,
                },
            ))
        }
        ControlFrame::Refused { version, reason } => {
            if version.major != local.version.major {
                Err(AttemptError::Refused(version_mismatch(
                    &format!("peer {endpoint}"),
                    version,
                    local.version,
                )))
            } else {
                Err(AttemptError::Refused(format!(
                    "peer {endpoint} refused the link: {reason}"
                )))
            }
        }
        other => Err(protocol_error(
            endpoint,
            &format!("expected a hello, got {other:?}"),
        )),
    }
}

/// Acceptor side: takes the control stream, judges the hello, answers. `Err` is why the link
/// was not established, for the log; a refusal has been sent to the peer by then.
pub(crate) async fn accept_hello(
    conn: &dyn MuxConnection,
    local: &LocalHello,
    cert_site: SiteId,
    policy: &dyn InboundPolicy,
) -> Result<(ControlStream, PeerHello), Refusal> {
    let hello_failed = |what: String| {
        Refusal::new(
            "hello",
            format!("{what}: the dialing router failed or hung up before the link was made"),
        )
    };
    let stream = conn
        .accept_stream()
        .await
        .map_err(|e| hello_failed(format!("no control stream: {e}")))?;
    let mut control = ControlStream::new(stream);
    let frame = control
        .recv()
        .await
        .map_err(|e| hello_failed(format!("reading the hello failed: {e}")))?
        .ok_or_else(|| hello_failed("the peer hung up before its hello".into()))?;
    let ControlFrame::Hello {
        version,
        site_id,
        site_name,
        mode,
        cost,
    } = frame
    else {
        return Err(Refusal::new(
            "hello",
            format!("expected a hello, got {frame:?}: not a skiff router, or a broken one"),
        ));
    };
    let hello_site = SiteId::from_bytes(site_id);
    if let Err(refusal) = judge_hello(version, hello_site, cert_site, policy) {
        let refused = ControlFrame::Refused {
            version: PROTOCOL_VERSION,
            reason: refusal.reason.clone(),
        };
        if control.send(&refused).await.is_ok() {
            control.finish().await;
            // Let the dialer read the refusal and hang up first.
            let _ = tokio::time::timeout(LINGER, conn.closed()).await;
        }
        return Err(refusal);
    }
    control
        .send(&local.frame(0))
        .await
        .map_err(|e| hello_failed(format!("sending our hello failed: {e}")))?;
    Ok((
        control,
        PeerHello {
            site_id: cert_site,
            site_name,
            mode,
            cost,
            version,
        },
    ))
}

/// Acceptor side, for a link refused before its hello could be judged (its client
/// certificate failed a check after the TLS handshake): answers the dialer's control stream
/// with a `Refused` frame carrying `reason`, so the dialer shows why, as QUIC's close reason
/// does. Each step is bounded by [`LINGER`]: a client that opens no stream is dropped.
pub(crate) async fn refuse_before_hello(conn: &dyn MuxConnection, reason: &str) {
    let Ok(Ok(stream)) = tokio::time::timeout(LINGER, conn.accept_stream()).await else {
        return;
    };
    let mut control = ControlStream::new(stream);
    let refused = ControlFrame::Refused {
        version: PROTOCOL_VERSION,
        reason: reason.to_string(),
    };
    if tokio::time::timeout(LINGER, control.send(&refused))
        .await
        .is_ok_and(|sent| sent.is_ok())
    {
        control.finish().await;
        // Let the dialer read the refusal and hang up first.
        let _ = tokio::time::timeout(LINGER, conn.closed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Deny;
    impl InboundPolicy for Deny {
        fn admit(&self, peer: SiteId) -> Result<(), String> {
            Err(format!("site {peer} was revoked"))
        }
    }
    struct Allow;
    impl InboundPolicy for Allow {
        fn admit(&self, _: SiteId) -> Result<(), String> {
            Ok(())
        }
    }

    #[test]
    fn judge_checks_version_then_identity_then_policy() {
        let a = SiteId::from_bytes([1; 16]);
        let b = SiteId::from_bytes([2; 16]);
        let v2 = ProtocolVersion { major: 2, minor: 0 };
        assert_eq!(judge_hello(v2, b, a, &Allow).unwrap_err().check, "version");
        assert_eq!(
            judge_hello(v2, b, a, &Allow).unwrap_err().reason,
            "the dialing router speaks link protocol 2.0, this router 1.3; upgrade the older \
             router so both speak link protocol 2.x"
        );
        assert!(
            judge_hello(PROTOCOL_VERSION, b, a, &Allow)
                .unwrap_err()
                .reason
                .contains("link certificate is for site 0101")
        );
        assert_eq!(
            judge_hello(PROTOCOL_VERSION, a, a, &Deny).unwrap_err(),
            Refusal::new("unknown-site", format!("site {a} was revoked"))
        );
        let newer_minor = ProtocolVersion { major: 1, minor: 7 };
        assert_eq!(judge_hello(newer_minor, a, a, &Allow), Ok(()));
    }
}
