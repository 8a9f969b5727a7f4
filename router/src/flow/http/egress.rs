//! The egress of HTTP flows: a flow stream for this router with protocol `http` becomes an
//! HTTP/2 connection whose requests go to the local connectors of the key. A request no
//! connector took is answered with `skiff-not-sent`, so the ingress may try another site.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::BytesMut;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use skiff_certs::SiteId;
use tokio::io::AsyncWriteExt;

use super::backend::SendError;
use super::io::{Body, StreamIo, boxed};
use super::stack::rescue_response;
use super::{NOT_SENT_HEADER, UPGRADE_HEADER, local, upgrade};
use crate::flow::{FlowOutcome, FlowRole, Flows};
use crate::link::LinkStream;
use crate::routing::RoutingKey;
use crate::wire::{FlowHeader, FlowStatusCode, FlowStatusFrame};

/// Serves an HTTP flow stream: answers its status, then HTTP/2 until the stream ends.
pub(crate) async fn serve_egress(
    flows: &Arc<Flows>,
    mut stream: LinkStream,
    header: &FlowHeader,
    key: RoutingKey,
    origin: SiteId,
    leftover: BytesMut,
) {
    if flows
        .config
        .connectors_for_family(&key, crate::routing::Family::Http)
        .is_empty()
    {
        let why = format!("key {key}: no HTTP connector for it here");
        crate::flow::tcp::answer_failure(
            &mut stream,
            FlowStatusFrame::fail(FlowStatusCode::NoRoute, why),
        )
        .await;
        return;
    }
    let mut ok = BytesMut::new();
    FlowStatusFrame::ok().encode(&mut ok);
    if stream.writer.write_all(&ok).await.is_err() {
        stream.reset();
        return;
    }
    let _guard = flows.register(header.flow_id, &key, origin, flows.me, FlowRole::Egress);
    let io = TokioIo::new(StreamIo::new(stream, leftover.freeze()));
    let f = flows.clone();
    let service =
        hyper::service::service_fn(move |req| request(f.clone(), key.clone(), origin, req));
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(super::PEER_MAX_STREAMS)
        .initial_stream_window_size(super::PEER_STREAM_WINDOW)
        .initial_connection_window_size(super::PEER_CONNECTION_WINDOW)
        .max_frame_size(super::PEER_MAX_FRAME)
        .max_header_list_size(super::PEER_MAX_HEADER_LIST)
        // The peer is a router of this network: its resets are requests its clients reset.
        .max_local_error_reset_streams(None)
        .max_pending_accept_reset_streams(None)
        .serve_connection(io, service);
    tokio::select! {
        () = flows.shutdown.cancelled() => {}
        r = conn => if let Err(e) = r {
            tracing::debug!(cause = %e, "HTTP/2 connection from a peer router ended");
        },
    }
}

async fn request(
    flows: Arc<Flows>,
    key: RoutingKey,
    origin: SiteId,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.headers().contains_key(UPGRADE_HEADER) {
        return Ok(upgrade::egress(&flows, &key, req).await);
    }
    let req = req.map(boxed);
    let result = local::send(&flows, &key, req).await;
    // The backends' failures leave a line here as a TCP flow's do (no record: the ingress
    // keeps one per client connection; `skiff connector list` says `failing`).
    let failed = match &result {
        Ok(_) => None,
        Err(SendError::NotSent(_, why)) => Some((FlowOutcome::ConnectRefused, why.clone())),
        Err(SendError::Failed(why)) => Some((FlowOutcome::Error, why.clone())),
        Err(SendError::TimedOut) => Some((
            FlowOutcome::Error,
            format!(
                "the backend sent no response head within {} s",
                super::RESPONSE_TIMEOUT.as_secs()
            ),
        )),
    };
    if let Some((outcome, why)) = failed {
        crate::flow::records::log_failure(
            &flows,
            key.as_str(),
            FlowRole::Egress,
            None,
            || flows.site_name(origin),
            outcome,
            &why,
        );
    }
    Ok(match result {
        Ok(resp) => resp,
        Err(SendError::NotSent(_, why)) => {
            let mut r = rescue_response(StatusCode::SERVICE_UNAVAILABLE, "connect-refused", &why);
            r.headers_mut().insert(
                HeaderName::from_static(NOT_SENT_HEADER),
                HeaderValue::from_static("1"),
            );
            r
        }
        Err(SendError::Failed(why)) => {
            rescue_response(StatusCode::BAD_GATEWAY, "backend-failed", &why)
        }
        Err(SendError::TimedOut) => rescue_response(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            &format!(
                "no response head within {} s",
                super::RESPONSE_TIMEOUT.as_secs()
            ),
        ),
    })
}
