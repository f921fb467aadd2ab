//! The gate every gRPC request passes before its service (a tower layer
//! around all of them, health and reflection included):
//!
//! - a call on a connection whose principal is no longer trusted (see
//!   [`crate::trust`]) is refused with the reason;
//! - every response body of a trusted connection ends with that reason as
//!   its status the moment trust ends, whatever service produced it, so an
//!   open stream (Subscribe, WatchReceipts, Replay, health Watch,
//!   reflection) of a revoked, expired or removed principal ends at once;
//! - the health and reflection streams, which the broker's handlers do not
//!   see, take a stream permit of the principal, so they count against
//!   `max_streams_per_principal` like every other stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::Frame;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Bytes, Service, http};

use crate::error::BrokerError;
use crate::identity::PeerInfo;
use crate::limits::Permit;
use crate::state::BrokerState;
use crate::trust::Connection;

/// Streams served by tonic's own services, counted here against the
/// principal's stream limit (the broker's streams take their permits in
/// their handlers).
pub const COUNTED_STREAMS: [&str; 3] = [
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

#[derive(Debug, Clone)]
pub struct GateLayer {
    state: Arc<BrokerState>,
}

impl GateLayer {
    pub fn new(state: Arc<BrokerState>) -> Self {
        Self { state }
    }
}

impl<S> tower_layer::Layer<S> for GateLayer {
    type Service = Gate<S>;
    fn layer(&self, inner: S) -> Gate<S> {
        Gate { inner, state: self.state.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct Gate<S> {
    inner: S,
    state: Arc<BrokerState>,
}

fn refuse<E>(e: BrokerError) -> BoxFuture<http::Response<Body>, E>
where
    E: Send + 'static,
{
    crate::metrics::rejected(e.reason());
    Box::pin(std::future::ready(Ok(Status::from(e).into_http())))
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for Gate<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<http::Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let info = req.extensions().get::<PeerInfo>().cloned();
        let connection = info.as_ref().and_then(|i| i.connection.clone());
        if let Some(c) = &connection
            && let Err(e) = c.check()
        {
            return refuse(e);
        }
        let mut permit = None;
        if COUNTED_STREAMS.contains(&req.uri().path()) {
            let admitted = match info.map(|i| i.identity) {
                Some(Ok(id)) => self.state.limiter.stream(&id.principal.uri()),
                Some(Err(e)) => Err(e),
                None => Err(BrokerError::NoClientCertificate),
            };
            match admitted {
                Ok(p) => permit = Some(p),
                Err(e) => return refuse(e),
            }
        }
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            if connection.is_none() && permit.is_none() {
                return Ok(response);
            }
            Ok(response.map(|body| Body::new(GatedBody::new(body, connection, permit))))
        })
    }
}

/// A response body that ends with the connection's reason once its trust
/// ends, and holds a stream permit while it lasts.
struct GatedBody {
    inner: Body,
    ended: Option<Pin<Box<dyn Future<Output = BrokerError> + Send>>>,
    done: bool,
    _permit: Option<Permit>,
}

impl GatedBody {
    fn new(inner: Body, connection: Option<Arc<Connection>>, permit: Option<Permit>) -> Self {
        let ended = connection
            .map(|c| Box::pin(async move { c.ended().await }) as Pin<Box<dyn Future<Output = BrokerError> + Send>>);
        Self { inner, ended, done: false, _permit: permit }
    }
}

impl http_body::Body for GatedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(ended) = self.ended.as_mut()
            && let Poll::Ready(why) = ended.as_mut().poll(cx)
        {
            // Nothing the service produced after this point goes out.
            self.done = true;
            let mut trailers = http::HeaderMap::new();
            let status = Status::from(why);
            if status.add_header(&mut trailers).is_err() {
                return Poll::Ready(Some(Err(status)));
            }
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.done = true,
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => self.done = true,
            Poll::Ready(Some(Err(_))) => self.done = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }
}
