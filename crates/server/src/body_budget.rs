//! One budget for the request bodies the server holds at once. Each body is capped
//! (`limits.max_body_bytes`), but many large ones together could exhaust the server's memory;
//! a large body waits for its share of `limits.max_body_bytes_in_flight` before it is read.
//! Waiting, not refusing: every face then behaves as under any other load, and a caller that
//! gives up stops waiting.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::Semaphore;

/// Bodies up to this size never wait: most requests are small.
const SMALL: usize = 64 << 10;

#[derive(Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    /// What a body may be at most (and so the share one is charged at most).
    max_body: usize,
}

impl BodyBudget {
    pub fn new(in_flight: usize, max_body: usize) -> BodyBudget {
        // Room for the largest body at least, or it would wait for ever.
        let in_flight = in_flight.max(max_body).min(Semaphore::MAX_PERMITS);
        BodyBudget {
            bytes: Arc::new(Semaphore::new(in_flight)),
            max_body,
        }
    }

    /// What a request's body is charged: its declared length, or, streamed without one, the
    /// most it may be.
    fn charge(&self, req: &Request) -> usize {
        let headers = req.headers();
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        match declared {
            // Over the limit, it is refused unread.
            Some(length) if length > self.max_body => 0,
            Some(length) => length,
            None if headers.contains_key(TRANSFER_ENCODING) => self.max_body,
            None => 0,
        }
    }
}

pub async fn limit(State(budget): State<BodyBudget>, req: Request, next: Next) -> Response {
    let charge = budget.charge(&req);
    if charge <= SMALL {
        return next.run(req).await;
    }
    // `max_body` is far below u32::MAX bytes in any sane configuration; saturate otherwise.
    let permits = u32::try_from(charge).unwrap_or(u32::MAX);
    // Held until the answer is ready (the semaphore is never closed, so this never fails).
    let _share = budget.bytes.acquire_many(permits).await;
    next.run(req).await
}
