//! A tower layer that may answer a request itself before the services see it: the dashboard's
//! static files and the token check are both a function from the request to `Some(response)`
//! (answered here) or `None` (passed on).

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};

type Answer = dyn Fn(&http::request::Parts) -> Option<http::Response<Body>> + Send + Sync;

#[derive(Clone)]
pub struct AnswerEarlyLayer {
    answer: Arc<Answer>,
}

impl AnswerEarlyLayer {
    pub fn new(answer: impl Fn(&http::request::Parts) -> Option<http::Response<Body>> + Send + Sync + 'static) -> Self {
        Self { answer: Arc::new(answer) }
    }
}

impl<S> tower_layer::Layer<S> for AnswerEarlyLayer {
    type Service = AnswerEarly<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AnswerEarly { inner, answer: self.answer.clone() }
    }
}

#[derive(Clone)]
pub struct AnswerEarly<S> {
    inner: S,
    answer: Arc<Answer>,
}

impl<S, B> Service<http::Request<B>> for AnswerEarly<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (parts, body) = req.into_parts();
        if let Some(resp) = (self.answer)(&parts) {
            return Box::pin(async move { Ok(resp) });
        }
        Box::pin(self.inner.call(http::Request::from_parts(parts, body)))
    }
}
