//! The engine's errors. Each face renders them in its own wire format; the variant says which
//! kind of failure it is (the HTTP status follows from it), the message says what happened.

use std::io;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{kind} {} not found", quoted(id))]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    /// The program to run does not exist in the sandbox.
    #[error("{0}")]
    MissingProgram(String),
    #[error("{0}")]
    TooLarge(String),
    /// The sandbox's own disk quota is full.
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    Unavailable(String),
    /// The server is at capacity (queue, sandbox count, uids): retry later.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A value a request sent, quoted for an error message: its first 64 characters, so a huge
/// one is not echoed back whole.
pub fn quoted(value: &str) -> String {
    const MOST: usize = 64;
    match value.char_indices().nth(MOST) {
        Some((cut, _)) => format!("{:?}...", &value[..cut]),
        None => format!("{value:?}"),
    }
}

/// A request's `field`, refused unless it lies between `min` and `max`.
pub fn within(field: &str, value: u64, min: u64, max: u64) -> Result<u64> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(Error::invalid(format!(
            "{field} must be between {min} and {max}"
        )))
    }
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Error {
        Error::InvalidArgument(msg.into())
    }

    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Error {
        Error::NotFound {
            kind,
            id: id.into(),
        }
    }

    pub fn internal(msg: impl std::fmt::Display) -> Error {
        Error::Internal(msg.to_string())
    }

    /// A file operation's error, with the path it concerned.
    pub fn file(path: &str, e: io::Error) -> Error {
        let why = match e.raw_os_error() {
            Some(libc::ENOENT) => return Error::not_found("path", path),
            Some(libc::EEXIST) => return Error::Conflict(format!("{path}: already exists")),
            Some(libc::ENOTEMPTY) => {
                return Error::Conflict(format!("{path}: directory not empty"));
            }
            Some(libc::EXDEV) => {
                "the path leaves the sandbox's own filesystem (a mount point such as /proc or /dev)"
            }
            Some(libc::ELOOP) => "too many levels of symbolic links",
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                return Error::Exhausted(format!("{path}: the sandbox's disk quota is full"));
            }
            Some(libc::EFBIG) => return Error::TooLarge(format!("{path}: file too large")),
            Some(libc::EISDIR) => "is a directory",
            Some(libc::ENOTDIR) => "a path component is not a directory",
            Some(libc::ENAMETOOLONG) => "name too long",
            Some(libc::EACCES) | Some(libc::EPERM) => "permission denied",
            Some(libc::ESRCH) => return Error::Conflict("the sandbox is not running".into()),
            _ if e.kind() == io::ErrorKind::InvalidInput => {
                return Error::invalid(format!("{path}: {e}"));
            }
            _ => return Error::Internal(format!("{path}: {e}")),
        };
        Error::invalid(format!("{path}: {why}"))
    }
}

impl From<cella_jail::Error> for Error {
    fn from(e: cella_jail::Error) -> Error {
        Error::Internal(e.to_string())
    }
}
