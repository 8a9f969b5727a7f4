//! The admin API of a running site (HTTP/JSON on `<site folder>/admin.sock`, optionally on a
//! TCP address too) and the client the CLI uses to talk to it.
//!
//! Routes: `GET /healthz` and `/livez` (liveness), `/readyz` (readiness, see
//! [`crate::probes`]), `/metrics`, `/v1/site`, `/v1/links`, `/v1/listeners`,
//! `/v1/connectors`, `/v1/network`, `/v1/flows`, `/v1/logs` (the recent log lines, see
//! [`crate::logbuf`]); `POST /v1/reload` (answers what changed:
//! [`crate::reload::ReloadReport`] with `"reloaded": true`); the console's files (GET).
//! Another method on a known path is 405 (with `Allow`), an unknown path 404. On the TCP
//! address (`--admin-address`) `POST /v1/reload` and `GET /v1/logs` are 403: the unix socket,
//! which its file mode limits to the site's owner, serves them. The TCP address also answers
//! 403 to a request whose `Host` is not an IP literal, `localhost` or `*.localhost`: a web page
//! the operator opens cannot read the API through a DNS name rebound to the admin address.
//!
//! While the site stops, [`serve_stopping`] keeps the same listeners answering the probes
//! (`/readyz` 503, `/livez` 200) and 503 to everything else, until the router has closed.

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
use crate::probes::Probes;
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

/// Every route: path and the one method it answers.
const ROUTES: &[(&str, Method)] = &[
    ("/healthz", Method::GET),
    ("/livez", Method::GET),
    ("/readyz", Method::GET),
    ("/metrics", Method::GET),
    ("/v1/site", Method::GET),
    ("/v1/links", Method::GET),
    ("/v1/listeners", Method::GET),
    ("/v1/connectors", Method::GET),
    ("/v1/network", Method::GET),
    ("/v1/flows", Method::GET),
    ("/v1/logs", Method::GET),
    ("/v1/reload", Method::POST),
];

/// What a connection is served from: the running site, or (while it stops) its probes only.
#[derive(Clone)]
enum Serving {
    Site(Arc<SiteState>),
    Stopping(Arc<Probes>),
}

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
    /// Changes (`POST /v1/reload`) and the log lines (`GET /v1/logs`, which name peer and
    /// client addresses) are served on the unix socket only, which the file mode limits to
    /// the site's owner; the TCP address is for probes, Prometheus and the console.
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
/// returns the listener, so nothing holds the site state any more.
pub async fn serve(
    listener: AdminListener,
    state: Arc<SiteState>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> AdminListener {
    serve_from(&listener, Serving::Site(state), stop).await;
    listener
}

/// Serves the probes of a stopping site on `listener` until `stop` turns true: `/readyz`
/// 503 with the reason, `/livez` and `/healthz` 200, every other route 503.
pub async fn serve_stopping(
    listener: AdminListener,
    probes: Arc<Probes>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    serve_from(&listener, Serving::Stopping(probes), stop).await;
}

async fn serve_from(
    listener: &AdminListener,
    serving: Serving,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if *stop.borrow() {
        return;
    }
    let mut conns = JoinSet::new();
    let changes = listener.allows_changes();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(_) if conns.len() >= MAX_CONNECTIONS => {
                    tracing::warn!(limit = MAX_CONNECTIONS, "admin connection refused: too many open");
                }
                Ok(stream) => { conns.spawn(serve_conn(stream, serving.clone(), changes, stop.clone())); }
                Err(e) => {
                    tracing::warn!(cause = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    // Each connection closes itself gracefully (an idle keep-alive one at once, one with a
    // request in progress once it is answered); what is still open after the grace is cut.
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.shutdown().await;
}

/// How long a stopping admin server lets requests in progress finish before it cuts them.
const STOP_GRACE: Duration = Duration::from_secs(1);

async fn serve_conn(
    stream: Box<dyn AdminIo>,
    serving: Serving,
    changes: bool,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let svc = hyper::service::service_fn(move |req| {
        let serving = serving.clone();
        async move { Ok::<_, Infallible>(route(req, &serving, changes).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            // A request in progress is answered (not reset); keep-alive ends after it.
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = result {
        tracing::debug!(cause = %e, "admin connection ended");
    }
}

/// Whether a request's `Host` may read the console and `/v1/*` on the TCP admin address (probes
/// and `/metrics` answer any Host): an IP literal (`1.2.3.4`,
/// `[::1]`, with any port), `localhost` or a `*.localhost` name. Any other name is what a
/// DNS-rebinding web page sends; Kubernetes probes (the pod IP) and `kubectl port-forward`
/// (`localhost`, `127.0.0.1`) pass.
fn host_allowed(host: Option<&str>) -> bool {
    let Some(host) = host.map(str::trim) else {
        // HTTP/1.1 requires Host; a request without one is no browser's.
        return true;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((v6, port)) => {
                v6.parse::<std::net::Ipv6Addr>().is_ok()
                    && (port.is_empty()
                        || port
                            .strip_prefix(':')
                            .is_some_and(|p| p.parse::<u16>().is_ok()))
            }
            None => false,
        };
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.parse::<u16>().is_ok() => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || (name.ends_with(".localhost") && name.len() > ".localhost".len())
}

async fn route(req: Request<Incoming>, serving: &Serving, unix: bool) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    // Probes and metrics answer whatever name they are asked by (Prometheus and health checks
    // often address a site by its DNS name); they hold counts and names, no client address.
    let any_host = matches!(path, "/healthz" | "/livez" | "/readyz" | "/metrics");
    if !unix && !any_host {
        let host = req
            .headers()
            .get(http::header::HOST)
            .map(|h| h.to_str().unwrap_or("\u{fffd}"));
        if !host_allowed(host) {
            let shown: String = host.unwrap_or("").chars().take(100).collect();
            return json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"error": format!("Host {shown:?} is refused: the TCP admin address answers only requests addressed to an IP address, localhost or a *.localhost name (a page on another name may be a DNS-rebinding attack); open it as http://127.0.0.1:PORT/ or http://localhost:PORT/ (kubectl port-forward, an SSH tunnel)")}),
            );
        }
    }
    if req.method() == Method::GET
        && let Some(asset) = crate::console::asset(path)
    {
        return asset;
    }
    let Some((_, allowed)) = ROUTES.iter().find(|(p, _)| *p == path) else {
        if crate::console::asset(path).is_some() {
            return not_allowed(&Method::GET);
        }
        return json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": format!("no such endpoint: {path}; see docs/operations.md (Admin API) for the routes")}),
        );
    };
    if req.method() != allowed {
        return not_allowed(allowed);
    }
    match path {
        "/healthz" | "/livez" => return text(StatusCode::OK, "ok\n"),
        "/readyz" => return readyz(serving, verbose(req.uri().query())),
        "/v1/reload" if !unix => {
            return json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"error": "POST /v1/reload is served on the admin socket only (<site folder>/admin.sock): the TCP admin address is read-only; run skiff site reload on the site's machine"}),
            );
        }
        "/v1/logs" if !unix => {
            return json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"error": "GET /v1/logs is served on the admin socket only (<site folder>/admin.sock): log lines hold whatever the site and its libraries log at the level the operator chose, unstructured and unbounded in what they say, unlike the fixed fields of /v1/flows; on the site's machine run skiff debug dump FILE"}),
            );
        }
        _ => {}
    }
    let state = match serving {
        // From begin_stopping() on, the site's own server answers as the stopping one will.
        Serving::Site(state) if state.probes().phase() != crate::probes::Phase::Stopping => state,
        Serving::Site(_) | Serving::Stopping(_) => {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"error": "the site is shutting down: only /readyz and /livez answer until it has stopped"}),
            );
        }
    };
    match path {
        "/metrics" => {
            let mut r = text(StatusCode::OK, &state.metrics_text());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/v1/site" => json(StatusCode::OK, &state.site_json()),
        "/v1/links" => json(StatusCode::OK, &state.links_json()),
        "/v1/listeners" => json(StatusCode::OK, &state.listeners_json()),
        "/v1/connectors" => json(StatusCode::OK, &state.connectors_json()),
        "/v1/network" => json(StatusCode::OK, &state.network_json()),
        "/v1/flows" => match flows_limit(req.uri().query()) {
            Ok(limit) => json(StatusCode::OK, &state.flows_json(limit)),
            Err(e) => json(StatusCode::BAD_REQUEST, &serde_json::json!({"error": e})),
        },
        "/v1/logs" => json(
            StatusCode::OK,
            &serde_json::to_value(crate::logbuf::site_log().snapshot()).unwrap_or_default(),
        ),
        "/v1/reload" => match state.reload().await {
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
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": format!("no such endpoint: {path}")}),
        ),
    }
}

/// `?verbose` (or `verbose=1`, `verbose=true`) in a query.
/// `?limit=N` of `GET /v1/flows`: at most N active and N recent flows, the newest.
fn flows_limit(query: Option<&str>) -> Result<Option<usize>, String> {
    for part in query.unwrap_or("").split('&') {
        if let Some(v) = part.strip_prefix("limit=") {
            return v.parse::<usize>().map(Some).map_err(|_| {
                format!("limit={v:?} is not a count: give ?limit=N with N a whole number (e.g. ?limit=100), or leave it out for every flow")
            });
        }
    }
    Ok(None)
}

fn verbose(query: Option<&str>) -> bool {
    query.unwrap_or("").split('&').any(|part| {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        k == "verbose" && !matches!(v, "0" | "false")
    })
}

/// `GET /readyz`: 200 `ready` (and a `warning:` line per listener or connector not serving),
/// or 503 with JSON `{"ready": false, "reasons": [...], "warnings": [...]}`; with `verbose`
/// the whole judgement as JSON, every check included, with the same status.
fn readyz(serving: &Serving, verbose: bool) -> Response<Full<Bytes>> {
    let r = match serving {
        Serving::Site(state) => state.probes().readiness(Some(&state.readiness_facts())),
        Serving::Stopping(probes) => probes.readiness(None),
    };
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if verbose {
        return json(status, &serde_json::to_value(&r).unwrap_or_default());
    }
    if r.ready {
        let mut body = String::from("ready\n");
        for w in &r.warnings {
            body.push_str(&format!("warning: {w}\n"));
        }
        return text(status, &body);
    }
    json(
        status,
        &serde_json::json!({"ready": false, "reasons": r.reasons, "warnings": r.warnings}),
    )
}

fn not_allowed(allowed: &Method) -> Response<Full<Bytes>> {
    let mut r = json(
        StatusCode::METHOD_NOT_ALLOWED,
        &serde_json::json!({"error": format!("method not allowed: this route answers {allowed} only")}),
    );
    if let Ok(v) = http::HeaderValue::from_str(allowed.as_str()) {
        r.headers_mut().insert(http::header::ALLOW, v);
    }
    r
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_literals_and_localhost_may_address_the_tcp_admin() {
        for ok in [
            "127.0.0.1:9090",
            "127.0.0.1",
            "10.1.2.3:9090",
            "[::1]:9090",
            "[::1]",
            "[fe80::1]:80",
            "localhost:9090",
            "LOCALHOST",
            "localhost.",
            "console.localhost:8080",
        ] {
            assert!(host_allowed(Some(ok)), "{ok} should pass");
        }
        for bad in [
            "evil.example:9090",
            "evil.example",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            ".localhost",
            "[::1",
            "[not-v6]:1",
            "127.0.0.1:port",
            "1.2.3.4:99999",
            "",
        ] {
            assert!(!host_allowed(Some(bad)), "{bad} should be refused");
        }
    }

    #[test]
    fn flows_limit_is_a_count_or_absent() {
        assert_eq!(flows_limit(None), Ok(None));
        assert_eq!(flows_limit(Some("x=1&limit=100")), Ok(Some(100)));
        assert!(
            flows_limit(Some("limit=-1"))
                .unwrap_err()
                .contains("?limit=N")
        );
    }
}
