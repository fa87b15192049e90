//! Files streamed into and out of a sandbox over HTTP, neither held whole in memory.

use std::io::Write;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cella_engine::{Error, FileEntry, Sandbox};
use futures::StreamExt;

/// Why a request body could not be read whole.
#[derive(Debug)]
pub enum BodyFault {
    /// Larger than `limits.max_body_bytes`.
    TooLarge,
    /// The client paused longer than `limits.body_read_timeout_secs`.
    Stalled,
    /// Cut off or malformed.
    Broken(String),
}

impl BodyFault {
    pub fn of(e: &(dyn std::error::Error + 'static)) -> BodyFault {
        let limit = std::iter::successors(Some(e), |e| e.source()).find_map(|cause| {
            if cause.is::<http_body_util::LengthLimitError>() {
                Some(BodyFault::TooLarge)
            } else if cause.is::<tower_http::timeout::TimeoutError>() {
                Some(BodyFault::Stalled)
            } else {
                None
            }
        });
        limit.unwrap_or_else(|| BodyFault::Broken(e.to_string()))
    }

    /// The HTTP status that fits, on every face.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyFault::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BodyFault::Stalled => StatusCode::REQUEST_TIMEOUT,
            BodyFault::Broken(_) => StatusCode::BAD_REQUEST,
        }
    }

    pub fn message(&self) -> String {
        match self {
            BodyFault::TooLarge => {
                "the request body is larger than the server's limit (limits.max_body_bytes)".into()
            }
            BodyFault::Stalled => "the client paused sending the request body for too long \
                                   (limits.body_read_timeout_secs)"
                .into(),
            BodyFault::Broken(why) => format!("reading the upload failed: {why}"),
        }
    }
}

/// Why an upload failed: its body, or the sandbox's side.
#[derive(Debug)]
pub enum UploadError {
    Body(BodyFault),
    Sandbox(Error),
}

impl From<Error> for UploadError {
    fn from(e: Error) -> UploadError {
        UploadError::Sandbox(e)
    }
}

/// Streams `chunks` into the file at `path` (absolute, or relative to the home directory;
/// parents made), mode `mode`. The file takes its place only once the body has come whole:
/// a broken upload changes nothing.
pub async fn write_stream<S, E>(
    sandbox: &Sandbox,
    path: &str,
    mode: u32,
    mut chunks: S,
) -> Result<FileEntry, UploadError>
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::error::Error + 'static,
{
    let path = sandbox.absolute(path);
    // `None` marks the end of the body; a channel closed without it, a body cut short (the
    // reader reports why), whose file is then dropped unfinished.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<Bytes>>(8);
    let target = path.clone();
    let writer = sandbox.with_fs(move |fs| {
        let mut write = || {
            let mut file = fs.replacement(&target, mode, true)?;
            while let Some(chunk) = rx.blocking_recv() {
                match chunk {
                    Some(chunk) => file.write_all(&chunk)?,
                    None => {
                        file.finish()?;
                        return fs.stat(&target).map(Some);
                    }
                }
            }
            Ok(None)
        };
        write().map_err(|e| Error::file(&target, e))
    });
    let feeder = async move {
        // A closed channel means the writer stopped on an error, which it reports; a sandbox
        // stopped meanwhile gets no more of the file, which would land in a filesystem nobody
        // can reach. Either way the rest of the body is still read (and dropped), so the
        // client gets that answer rather than a broken pipe.
        let (mut tx, mut stopped) = (Some(tx), false);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| UploadError::Body(BodyFault::of(&e)))?;
            if !stopped && !sandbox.is_running() {
                (tx, stopped) = (None, true);
            }
            if let Some(sender) = &tx
                && sender.send(Some(chunk)).await.is_err()
            {
                tx = None;
            }
        }
        if stopped {
            let stopped = Error::Conflict("the sandbox stopped during the upload".into());
            return Err(UploadError::Sandbox(stopped));
        }
        if let Some(sender) = &tx {
            let _ = sender.send(None).await;
        }
        Ok(())
    };
    let (written, fed) = tokio::join!(writer, feeder);
    fed?;
    written?.ok_or_else(|| Error::internal("the upload ended without its end").into())
}

/// Writes the files of a multipart form: each `file` field goes to the `path` field before
/// it (a directory ending in `/` takes the file's own name), or to the home directory under
/// its own name. A form without a file is refused.
pub async fn write_form(
    sandbox: &Sandbox,
    mut form: axum::extract::Multipart,
) -> Result<Vec<FileEntry>, UploadError> {
    let unreadable = |e: axum::extract::multipart::MultipartError| {
        UploadError::Body(match BodyFault::of(&e) {
            BodyFault::Broken(_) => BodyFault::Broken(e.body_text()),
            fault => fault,
        })
    };
    let (mut target, mut written) = (None::<String>, Vec::new());
    while let Some(field) = form.next_field().await.map_err(unreadable)? {
        match field.name() {
            Some("path") => target = Some(field.text().await.map_err(unreadable)?),
            Some("file") => {
                let name = field.file_name().unwrap_or("upload").to_string();
                let dest = match &target {
                    Some(t) if t.ends_with('/') => format!("{t}{name}"),
                    Some(t) => t.clone(),
                    None => name,
                };
                written.push(write_stream(sandbox, &dest, 0o644, field).await?);
            }
            _ => {}
        }
    }
    if written.is_empty() {
        let no_file = Error::invalid("the form has no `file` field");
        return Err(UploadError::Sandbox(no_file));
    }
    Ok(written)
}

/// A file mode as clients send it (`644`, `0755`, `0o600`), or `default` if none.
pub fn parse_mode(mode: Option<&str>, default: u32) -> Result<u32, Error> {
    match mode {
        None => Ok(default),
        Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| Error::invalid(format!("invalid octal mode {m:?}"))),
    }
}

/// What a download says its content is.
#[derive(Debug, Clone, Copy)]
pub enum ContentType {
    /// `application/octet-stream`, whatever the file.
    Binary,
    /// Guessed from the file's name (`text/csv`, `image/png`, ...).
    Guessed,
}

/// The file at `path` as a download: streamed, with its length and an attachment
/// disposition naming it.
pub async fn download(sandbox: &Sandbox, path: &str, kind: ContentType) -> Result<Response, Error> {
    let path = sandbox.absolute(path);
    let (file, size) = sandbox.on_path(&path, |fs, p| fs.open_read(p)).await?;
    let name = std::path::Path::new(&path)
        .file_name()
        .map_or("download".into(), |n| n.to_string_lossy().into_owned());
    let content_type = match kind {
        ContentType::Binary => "application/octet-stream".to_string(),
        ContentType::Guessed => mime_guess::from_path(&name)
            .first_or_octet_stream()
            .essence_str()
            .to_string(),
    };
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(
        tokio::fs::File::from_std(file),
    ));
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_LENGTH, size.to_string()),
            (header::CONTENT_DISPOSITION, content_disposition(&name)),
        ],
        body,
    )
        .into_response())
}

/// `attachment; filename*=UTF-8''<percent-encoded name>` (RFC 6266).
pub fn content_disposition(name: &str) -> String {
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename*=UTF-8''{encoded}")
}
