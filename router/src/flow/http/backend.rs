//! Requests from a router to the backends of its HTTP connectors: HTTP/1.1 connections kept
//! alive in a small idle pool per connector, or one shared HTTP/2 connection for `http2`
//! connectors. A request that could not be sent (no connection could be made) comes back to
//! the caller, which may send it elsewhere.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::io::Body;
use crate::flow::CONNECT_TIMEOUT;

/// Idle HTTP/1.1 connections kept per connector.
const MAX_IDLE: usize = 32;
/// How long an idle HTTP/1.1 connection is reused: below common backend keep-alive timeouts
/// (nginx 75 s, Apache 5 s is the outlier), so a request rarely races the backend's close.
const IDLE_REUSE: std::time::Duration = std::time::Duration::from_secs(4);

/// Why a request got no response.
// The request comes back whole on the (rare) failure path, where a box would gain nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum SendError {
    /// It never left: it may be sent elsewhere.
    NotSent(Request<Body>, String),
    /// It may have reached the backend; it must not be sent again.
    Failed(String),
    /// It was sent and no response head came within [`super::RESPONSE_TIMEOUT`].
    TimedOut,
}

/// The outcome of `try_send_request`, waiting at most [`super::RESPONSE_TIMEOUT`] for the
/// response head (the time to get a connection is bounded before this starts).
pub(crate) async fn sent(
    sending: impl std::future::Future<
        Output = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>>,
    >,
) -> Result<Response<Incoming>, SendError> {
    match tokio::time::timeout(super::RESPONSE_TIMEOUT, sending).await {
        Err(_) => Err(SendError::TimedOut),
        Ok(Ok(r)) => Ok(r),
        Ok(Err(mut e)) => match e.take_message() {
            Some(req) => Err(SendError::NotSent(req, e.into_error().to_string())),
            None => Err(SendError::Failed(e.into_error().to_string())),
        },
    }
}

/// The connections to one connector's backend.
pub(crate) struct BackendPool {
    host: String,
    port: u16,
    http2: bool,
    idle: Mutex<Vec<(http1::SendRequest<Body>, std::time::Instant)>>,
    shared: tokio::sync::Mutex<Option<http2::SendRequest<Body>>>,
}

impl BackendPool {
    pub(crate) fn new(host: &str, port: u16, http2: bool) -> Self {
        BackendPool {
            host: host.to_owned(),
            port,
            http2,
            idle: Mutex::default(),
            shared: tokio::sync::Mutex::default(),
        }
    }

    /// Where it sends.
    pub(crate) fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    async fn connect(&self) -> Result<TokioIo<tokio::net::TcpStream>, String> {
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            crate::flow::tcp::connect_backend(&self.host, self.port),
        )
        .await
        .map_err(|_| format!("backend {} did not accept in time", self.address()))?
        .map_err(|status| status.message)?;
        let _ = tcp.set_nodelay(true);
        Ok(TokioIo::new(tcp))
    }

    /// A new HTTP/1.1 connection to the backend (`upgrades`: one that may switch protocols);
    /// its task ends with the connection.
    async fn connect_h1(&self, upgrades: bool) -> Result<http1::SendRequest<Body>, String> {
        let io = self.connect().await?;
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(super::MAX_HEAD_BYTES)
            .handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = if upgrades {
                conn.with_upgrades().await
            } else {
                conn.await
            };
        });
        Ok(sender)
    }

    /// Sends `req`; the response's body keeps an HTTP/1.1 connection busy until it ends.
    pub(crate) async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        if self.http2 {
            return self.send_h2(req).await;
        }
        let reused = {
            let mut idle = self.idle.lock().unwrap();
            idle.retain(|(s, at)| !s.is_closed() && at.elapsed() < IDLE_REUSE);
            idle.iter()
                .position(|(s, _)| s.is_ready())
                .map(|i| idle.swap_remove(i).0)
        };
        let req = match reused {
            Some(sender) => match self.send_on(sender, req).await {
                // The backend closed the kept-alive connection as we took it: nothing was
                // sent, so a new connection to the same backend is tried first.
                Err(SendError::NotSent(req, _)) => req,
                done => return done,
            },
            None => req,
        };
        let mut sender = match self.connect_h1(false).await {
            Ok(s) => s,
            Err(why) => return Err(SendError::NotSent(req, why)),
        };
        if let Err(e) = sender.ready().await {
            return Err(SendError::NotSent(req, e.to_string()));
        }
        self.send_on(sender, req).await
    }

    async fn send_on(
        self: &Arc<Self>,
        mut sender: http1::SendRequest<Body>,
        req: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        match sent(sender.try_send_request(req)).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let body = GiveBack {
                    inner: body,
                    back: Some((self.clone(), sender)),
                };
                Ok(Response::from_parts(parts, super::io::boxed(body)))
            }
            Err(e) => Err(e),
        }
    }

    async fn send_h2(&self, req: Request<Body>) -> Result<Response<Body>, SendError> {
        let mut sender = {
            let mut shared = self.shared.lock().await;
            match shared.as_ref().filter(|s| !s.is_closed()) {
                Some(s) => s.clone(),
                None => {
                    let io = match self.connect().await {
                        Ok(io) => io,
                        Err(why) => return Err(SendError::NotSent(req, why)),
                    };
                    let (sender, conn) = match http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .initial_stream_window_size(super::PEER_STREAM_WINDOW)
                        .initial_connection_window_size(super::PEER_CONNECTION_WINDOW)
                        .max_header_list_size(super::MAX_HEAD_BYTES as u32)
                        .handshake(io)
                        .await
                    {
                        Ok(pair) => pair,
                        Err(e) => return Err(SendError::NotSent(req, e.to_string())),
                    };
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    *shared = Some(sender.clone());
                    sender
                }
            }
        };
        match sent(sender.try_send_request(req)).await {
            Ok(resp) => Ok(resp.map(super::io::boxed)),
            Err(e) => Err(e),
        }
    }

    fn give_back(&self, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap();
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push((sender, std::time::Instant::now()));
    }

    /// Sends an upgrade request (WebSocket) on a connection of its own, and on
    /// `101 Switching Protocols` gives the upgraded connection too.
    pub(crate) async fn upgrade(
        &self,
        req: Request<Body>,
    ) -> Result<(Response<Body>, Option<hyper::upgrade::OnUpgrade>), SendError> {
        let mut sender = match self.connect_h1(true).await {
            Ok(s) => s,
            Err(why) => return Err(SendError::NotSent(req, why)),
        };
        match sent(sender.try_send_request(req)).await {
            Ok(mut resp) => {
                let upgraded = (resp.status() == http::StatusCode::SWITCHING_PROTOCOLS)
                    .then(|| hyper::upgrade::on(&mut resp));
                Ok((resp.map(super::io::boxed), upgraded))
            }
            Err(e) => Err(e),
        }
    }
}

/// A response body that returns its HTTP/1.1 connection to the idle pool when it ends (or is
/// dropped: hyper closes a connection whose response was not read to the end, and the pool
/// skips closed ones).
struct GiveBack {
    inner: Incoming,
    back: Option<(Arc<BackendPool>, http1::SendRequest<Body>)>,
}

impl GiveBack {
    fn give_back(&mut self) {
        if let Some((pool, sender)) = self.back.take() {
            pool.give_back(sender);
        }
    }
}

impl hyper::body::Body for GiveBack {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) {
            self.give_back();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for GiveBack {
    fn drop(&mut self) {
        self.give_back();
    }
}
