//! The admin API of a running site (HTTP/JSON on `<site folder>/admin.sock`, optionally on a
//! TCP address too) and the client the CLI uses to talk to it.
//!
//! Routes: `GET /healthz`, `/readyz`, `/metrics`, `/v1/site`, `/v1/links`, `/v1/listeners`,
//! `/v1/connectors`, `/v1/network`, `/v1/flows`; `POST /v1/reload` (answers what changed:
//! [`crate::reload::ReloadReport`] with `"reloaded": true`).

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::task::JoinSet;

use crate::SiteError;
use crate::run::SiteState;

/// Most admin connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the CLI waits for the admin API.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest admin response the client reads.
const MAX_RESPONSE: usize = 8 * 1024 * 1024;

/// Stops the admin servers: send `true`.
pub type StopSignal = tokio::sync::watch::Receiver<bool>;

/// Where the admin API listens.
pub enum AdminListener {
    /// `<site folder>/admin.sock`.
    Unix(UnixListener),
    /// `--admin-address`.
    Tcp(TcpListener),
}

trait AdminIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AdminIo for T {}

impl AdminListener {
    /// Changes (`POST /v1/reload`) are served on the unix socket only, which the file mode
    /// limits to the site's owner; the TCP address is for probes and Prometheus.
    fn allows_changes(&self) -> bool {
        matches!(self, AdminListener::Unix(_))
    }

    async fn accept(&self) -> std::io::Result<Box<dyn AdminIo>> {
        Ok(match self {
            AdminListener::Unix(l) => Box::new(l.accept().await?.0),
            AdminListener::Tcp(l) => Box::new(l.accept().await?.0),
        })
    }
}

/// Serves the admin API until `stop` turns true; then ends every connection in flight and
/// returns, so nothing holds the site state any more.
pub async fn serve(
    listener: AdminListener,
    state: Arc<SiteState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let changes = listener.allows_changes();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(_) if conns.len() >= MAX_CONNECTIONS => {
                    tracing::warn!(limit = MAX_CONNECTIONS, "admin connection refused: too many open");
                }
                Ok(stream) => { conns.spawn(serve_conn(stream, state.clone(), changes)); }
                Err(e) => {
                    tracing::warn!(cause = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    conns.shutdown().await;
}

async fn serve_conn(stream: Box<dyn AdminIo>, state: Arc<SiteState>, changes: bool) {
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(req, &state, changes).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), svc)
        .await
    {
        tracing::debug!(cause = %e, "admin connection ended");
    }
}

async fn route(req: Request<Incoming>, state: &SiteState, changes: bool) -> Response<Full<Bytes>> {
    if req.method() == Method::GET
        && let Some(asset) = crate::console::asset(req.uri().path())
    {
        return asset;
    }
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/reload") if !changes => json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({"error": "changes are accepted on the admin socket only"}),
        ),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => text(StatusCode::OK, "ready\n"),
        (&Method::GET, "/metrics") => text(StatusCode::OK, &state.metrics_text()),
        (&Method::GET, "/v1/site") => json(StatusCode::OK, &state.site_json()),
        (&Method::GET, "/v1/links") => json(StatusCode::OK, &state.links_json()),
        (&Method::GET, "/v1/listeners") => json(StatusCode::OK, &state.listeners_json()),
        (&Method::GET, "/v1/connectors") => json(StatusCode::OK, &state.connectors_json()),
        (&Method::GET, "/v1/network") => json(StatusCode::OK, &state.network_json()),
        (&Method::GET, "/v1/flows") => json(StatusCode::OK, &state.flows_json()),
        (&Method::POST, "/v1/reload") => match state.reload().await {
            Ok(report) => {
                let mut body = serde_json::to_value(&report).unwrap_or_default();
                body["reloaded"] = serde_json::Value::Bool(true);
                json(StatusCode::OK, &body)
            }
            Err(e) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &serde_json::json!({"error": crate::error_chain(&e)}),
            ),
        },
        (_, "/healthz" | "/readyz" | "/metrics" | "/v1/site" | "/v1/links" | "/v1/reload") => json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"error": "method not allowed"}),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "no such endpoint"}),
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(body).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Sends one request to the admin socket of the site in `dir` and returns the JSON answer.
/// A socket that does not answer means the site is not running.
pub async fn admin_request(
    socket: &Path,
    method: Method,
    path: &str,
) -> Result<serde_json::Value, SiteError> {
    let not_running = || SiteError::NotRunning {
        dir: socket.parent().unwrap_or(Path::new(".")).to_path_buf(),
    };
    let work = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|_| not_running())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| not_running())?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "skiff-admin")
            .body(Full::new(Bytes::new()))
            .expect("valid request");
        let resp = sender.send_request(req).await.map_err(|_| not_running())?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|_| not_running())?
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
        });
        if status.is_success() {
            Ok(value)
        } else {
            let message = value
                .get("error")
                .and_then(|m| m.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            Err(SiteError::Admin {
                status: status.as_u16(),
                message,
            })
        }
    };
    tokio::time::timeout(CLIENT_TIMEOUT, work)
        .await
        .map_err(|_| not_running())?
}
