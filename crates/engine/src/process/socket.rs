//! Connecting to a UNIX socket a process of a sandbox serves on.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UnixStream;

use super::Process;
use crate::error::{Error, Result};
use crate::sandbox::Sandbox;

/// Connects to the socket `path` of the sandbox once `service` has made it, without
/// following anything the sandbox could have planted on the path. `what` names the service
/// in errors.
pub async fn connect_socket(
    sandbox: &Arc<Sandbox>,
    service: &Arc<Process>,
    path: &str,
    deadline: Instant,
    what: &str,
) -> Result<UnixStream> {
    loop {
        let p = path.to_string();
        match sandbox
            .with_fs(move |fs| fs.open_socket(&p).map_err(|e| Error::file(&p, e)))
            .await
        {
            Ok(fd) => {
                let target = format!("/proc/self/fd/{}", fd.as_raw_fd());
                match UnixStream::connect(&target).await {
                    Ok(stream) => return Ok(stream),
                    // The socket file exists from bind(2) a moment before listen(2).
                    Err(e)
                        if e.kind() == std::io::ErrorKind::ConnectionRefused
                            && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err(e) => {
                        return Err(Error::Unavailable(format!("connect to the {what}: {e}")));
                    }
                }
            }
            Err(Error::NotFound { .. })
                if Instant::now() < deadline && service.exit().is_none() =>
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(Error::NotFound { .. }) if service.exit().is_some() => {
                let err = String::from_utf8_lossy(&service.captured().stderr).into_owned();
                return Err(Error::Unavailable(format!(
                    "the {what} exited while starting: {err}"
                )));
            }
            Err(Error::NotFound { .. }) => {
                service.kill();
                return Err(Error::Unavailable(format!(
                    "the {what} did not start in time"
                )));
            }
            Err(e) => return Err(e),
        }
    }
}
