//! `cella shell [ID]`: a real terminal into a sandbox, over the terminal WebSocket
//! (`/api/v1/sandboxes/{id}/terminal`). The local terminal is raw while attached; its size
//! follows the window's.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::Duration;

use rustix::termios::{self, OptionalActions, Termios};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use crate::client::{Target, call};

#[derive(clap::Args)]
pub struct ShellArgs {
    #[command(flatten)]
    target: Target,
    /// The sandbox; without it a fresh one is made, and deleted when the shell exits.
    sandbox: Option<String>,
}

/// Restores the terminal's mode when dropped.
struct RawMode(Option<Termios>);

impl RawMode {
    fn enter() -> RawMode {
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else {
            return RawMode(None); // not a terminal: pass bytes through as they come
        };
        let mut raw = saved.clone();
        raw.make_raw();
        let _ = termios::tcsetattr(stdin.as_fd(), OptionalActions::Now, &raw);
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), OptionalActions::Now, saved);
        }
    }
}

fn window_size() -> (u16, u16) {
    termios::tcgetwinsize(std::io::stdout().as_fd())
        .ok()
        .filter(|w| w.ws_col > 0 && w.ws_row > 0)
        .map_or((80, 24), |w| (w.ws_col, w.ws_row))
}

pub fn shell(args: ShellArgs) -> Result<ExitCode, String> {
    let made = match &args.sandbox {
        Some(_) => None,
        None => {
            let (client, url) = args.target.connect("/sandboxes")?;
            let sandbox = call(client.post(url).json(&json!({})))?;
            Some(sandbox["id"].as_str().unwrap_or_default().to_string())
        }
    };
    let id = args.sandbox.clone().or(made.clone()).unwrap_or_default();
    let result = attach(&args.target, &id);
    if let Some(id) = made {
        let (client, url) = args.target.connect(&format!("/sandboxes/{id}"))?;
        let _ = call(client.delete(url));
    }
    result
}

fn attach(target: &Target, id: &str) -> Result<ExitCode, String> {
    let (cols, rows) = window_size();
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
    let url = target.ws_url(&format!(
        "/sandboxes/{id}/terminal?cols={cols}&rows={rows}&term={term}"
    ))?;
    let (mut socket, _) = connect(&url, target)?;
    let _raw = RawMode::enter();
    let mut size = (cols, rows);
    let mut stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut keys = [0u8; 4096];
    loop {
        // Keystrokes first, without waiting: a short poll of stdin, then the socket.
        let mut fds = [rustix::event::PollFd::new(
            &stdin,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 10_000_000,
        };
        if rustix::event::poll(&mut fds, Some(&timeout)).unwrap_or(0) > 0 {
            let n = stdin.read(&mut keys).map_err(|e| e.to_string())?;
            if n == 0 {
                let _ = socket.close(None);
                return Ok(ExitCode::SUCCESS);
            }
            send(&mut socket, Message::binary(keys[..n].to_vec()))?;
        }
        let now = window_size();
        if now != size {
            size = now;
            let resize = json!({"type": "resize", "cols": now.0, "rows": now.1});
            send(&mut socket, Message::text(resize.to_string()))?;
        }
        match socket.read() {
            Ok(Message::Binary(out)) => {
                stdout.write_all(&out).map_err(|e| e.to_string())?;
                stdout.flush().map_err(|e| e.to_string())?;
            }
            Ok(Message::Text(text)) => {
                let exit: Value = serde_json::from_str(&text).unwrap_or_default();
                if exit["type"] == "exit" {
                    let code = exit["code"].as_i64().unwrap_or(1);
                    return Ok(ExitCode::from(code.clamp(0, 255) as u8));
                }
            }
            Ok(Message::Close(_)) => return Ok(ExitCode::SUCCESS),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("the terminal's connection broke: {e}")),
        }
    }
}

fn send(socket: &mut WebSocket<TcpStream>, message: Message) -> Result<(), String> {
    socket
        .send(message)
        .map_err(|e| format!("the terminal's connection broke: {e}"))
}

/// A WebSocket over plain TCP, its reads short so that keystrokes are never kept waiting.
fn connect(
    url: &str,
    target: &Target,
) -> Result<
    (
        WebSocket<TcpStream>,
        tungstenite::handshake::client::Response,
    ),
    String,
> {
    let parsed = url
        .strip_prefix("ws://")
        .ok_or("cella shell speaks plain HTTP only")?;
    let host = parsed.split('/').next().unwrap_or_default();
    let stream =
        TcpStream::connect(host).map_err(|e| format!("cannot reach the server at {host}: {e}"))?;
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(url)
        .map_err(|e| e.to_string())?;
    if let Some(auth) = target.authorization() {
        let value = auth
            .parse()
            .map_err(|_| "the API token must be printable ASCII")?;
        request.headers_mut().insert("Authorization", value);
    }
    let (socket, response) = tungstenite::client(request, stream).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r)) => {
            let body = r
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            format!("{}: {body}", r.status())
        }
        e => e.to_string(),
    })?;
    socket
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(10)))
        .map_err(|e| e.to_string())?;
    Ok((socket, response))
}
