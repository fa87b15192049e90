//! A minimal ZeroMQ (ZMTP 3.0, NULL mechanism) client over a UNIX socket: enough to be a
//! DEALER on a kernel's shell socket and a SUB on its iopub socket.
//!
//! The peer is a kernel running user code, so it is untrusted: frames and messages are
//! bounded, and anything malformed ends the connection with an error instead of a hang or an
//! unbounded allocation.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Largest message accepted, all frames together (a PNG in a display bundle fits easily).
const MAX_MESSAGE: u64 = 64 << 20;
const MAX_FRAMES: usize = 256;

const FLAG_MORE: u8 = 0x01;
const FLAG_LONG: u8 = 0x02;
const FLAG_COMMAND: u8 = 0x04;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dealer,
    Sub,
}

impl Kind {
    fn name(self) -> &'static [u8] {
        match self {
            Kind::Dealer => b"DEALER",
            Kind::Sub => b"SUB",
        }
    }
}

pub struct Socket {
    stream: UnixStream,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("zmtp: {msg}"))
}

impl Socket {
    /// Performs the ZMTP greeting and NULL handshake on a connected stream.
    pub async fn handshake(mut stream: UnixStream, kind: Kind) -> io::Result<Socket> {
        let mut greeting = [0u8; 64];
        greeting[0] = 0xff;
        greeting[9] = 0x7f;
        greeting[10] = 3; // ZMTP 3.0: subscriptions travel as messages
        greeting[11] = 0;
        greeting[12..16].copy_from_slice(b"NULL");
        stream.write_all(&greeting).await?;
        let mut peer = [0u8; 64];
        stream.read_exact(&mut peer).await?;
        if peer[0] != 0xff || peer[9] & 1 != 1 || peer[10] < 3 || &peer[12..16] != b"NULL" {
            return Err(bad("the peer is not a ZMTP 3 NULL-mechanism socket"));
        }
        let mut ready = vec![5u8];
        ready.extend_from_slice(b"READY");
        let name = b"Socket-Type";
        ready.push(name.len() as u8);
        ready.extend_from_slice(name);
        ready.extend_from_slice(&(kind.name().len() as u32).to_be_bytes());
        ready.extend_from_slice(kind.name());
        let mut socket = Socket { stream };
        socket.write_frame(&ready, FLAG_COMMAND).await?;
        let (flags, body) = socket.read_frame(MAX_MESSAGE).await?;
        if flags & FLAG_COMMAND == 0 || !body.starts_with(b"\x05READY") {
            return Err(bad("the peer did not answer READY"));
        }
        if kind == Kind::Sub {
            // Subscribe to everything: a message whose first byte is 1.
            socket.send(&[b"\x01"]).await?;
        }
        Ok(socket)
    }

    async fn write_frame(&mut self, body: &[u8], flags: u8) -> io::Result<()> {
        let mut head = Vec::with_capacity(9);
        if body.len() > 255 {
            head.push(flags | FLAG_LONG);
            head.extend_from_slice(&(body.len() as u64).to_be_bytes());
        } else {
            head.push(flags);
            head.push(body.len() as u8);
        }
        self.stream.write_all(&head).await?;
        self.stream.write_all(body).await
    }

    /// Reads one frame of at most `budget` bytes.
    async fn read_frame(&mut self, budget: u64) -> io::Result<(u8, Vec<u8>)> {
        let flags = self.stream.read_u8().await?;
        let len = if flags & FLAG_LONG != 0 {
            self.stream.read_u64().await?
        } else {
            u64::from(self.stream.read_u8().await?)
        };
        if len > budget {
            return Err(bad("message too large"));
        }
        let mut body = vec![0u8; len as usize];
        self.stream.read_exact(&mut body).await?;
        Ok((flags, body))
    }

    /// Sends one multipart message.
    pub async fn send(&mut self, frames: &[&[u8]]) -> io::Result<()> {
        for (i, frame) in frames.iter().enumerate() {
            let more = if i + 1 < frames.len() { FLAG_MORE } else { 0 };
            self.write_frame(frame, more).await?;
        }
        self.stream.flush().await
    }

    /// Receives one multipart message, skipping commands (a peer's PING or ERROR).
    pub async fn recv(&mut self) -> io::Result<Vec<Vec<u8>>> {
        let mut frames = Vec::new();
        let mut budget = MAX_MESSAGE;
        loop {
            let (flags, body) = self.read_frame(budget).await?;
            if flags & FLAG_COMMAND != 0 {
                if body.starts_with(b"\x05ERROR") {
                    return Err(bad("the peer sent ERROR"));
                }
                continue;
            }
            budget -= body.len() as u64;
            frames.push(body);
            if frames.len() > MAX_FRAMES {
                return Err(bad("too many frames in one message"));
            }
            if flags & FLAG_MORE == 0 {
                return Ok(frames);
            }
        }
    }
}
