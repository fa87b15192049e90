//! A stream of events as an HTTP answer: NDJSON lines by default, Server-Sent Events (each
//! named by its `type`) when the client accepts `text/event-stream`.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::Serialize;

/// An event that says its own name (the SSE event name).
pub trait Named: Serialize {
    fn name(&self) -> &'static str;
}

pub fn respond<E>(headers: &HeaderMap, events: impl Stream<Item = E> + Send + 'static) -> Response
where
    E: Named + Send + 'static,
{
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if sse {
        let events = events.map(|e| {
            Ok::<_, Infallible>(
                Event::default()
                    .event(e.name())
                    .json_data(&e)
                    .unwrap_or_default(),
            )
        });
        return Sse::new(events).into_response();
    }
    let lines = events.map(|e| {
        let mut line = serde_json::to_vec(&e).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, Infallible>(line)
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// The messages of a channel as a stream.
pub fn of_channel<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
