//! A minimal ZeroMQ (ZMTP 3.0, NULL mechanism) client over a UNIX socket: enough to be a
//! DEALER on a kernel's shell socket and a SUB on its iopub socket.
//!
//! The peer is a kernel running user code, so it is untrusted: a message larger than the
//! reader's limit is read past without being kept, and anything malformed ends the
//! connection with an error instead of a hang or an unbounded allocation.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Largest command frame accepted (READY, PING, ERROR: a few bytes each).
const MAX_COMMAND: u64 = 64 << 10;
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

/// A connected socket, or one direction of it after [`Socket::split`].
pub struct Socket<S = UnixStream> {
    stream: S,
}

/// One message from the peer.
pub enum Received {
    Frames(Vec<Vec<u8>>),
    /// A message larger than the reader's limit, read to its end: its frames up to the limit
    /// (the last of them cut there), and its whole size.
    TooLarge {
        prefix: Vec<Vec<u8>>,
        size: u64,
    },
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
        let (flags, len) = socket.read_head().await?;
        let body = socket.read_body(len, MAX_COMMAND).await?;
        if flags & FLAG_COMMAND == 0 || !body.starts_with(b"\x05READY") {
            return Err(bad("the peer did not answer READY"));
        }
        if kind == Kind::Sub {
            // Subscribe to everything: a message whose first byte is 1.
            socket.send(&[b"\x01"]).await?;
        }
        Ok(socket)
    }

    /// Splits into a receiving and a sending half, so one task can read while another sends.
    pub fn split(self) -> (Socket<OwnedReadHalf>, Socket<OwnedWriteHalf>) {
        let (read, write) = self.stream.into_split();
        (Socket { stream: read }, Socket { stream: write })
    }
}

impl<S: AsyncWrite + Unpin> Socket<S> {
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

    /// Sends one multipart message.
    pub async fn send(&mut self, frames: &[&[u8]]) -> io::Result<()> {
        for (i, frame) in frames.iter().enumerate() {
            let more = if i + 1 < frames.len() { FLAG_MORE } else { 0 };
            self.write_frame(frame, more).await?;
        }
        self.stream.flush().await
    }
}

impl<S: AsyncRead + Unpin> Socket<S> {
    /// Reads a frame's flags and length.
    async fn read_head(&mut self) -> io::Result<(u8, u64)> {
        let flags = self.stream.read_u8().await?;
        let len = if flags & FLAG_LONG != 0 {
            self.stream.read_u64().await?
        } else {
            u64::from(self.stream.read_u8().await?)
        };
        Ok((flags, len))
    }

    /// Reads a frame's body of `len` bytes, at most `max`.
    async fn read_body(&mut self, len: u64, max: u64) -> io::Result<Vec<u8>> {
        if len > max {
            return Err(bad("frame too large"));
        }
        let mut body = vec![0u8; len as usize];
        self.stream.read_exact(&mut body).await?;
        Ok(body)
    }

    /// Reads the first `keep` of `len` bytes and past the rest.
    async fn read_prefix(&mut self, len: u64, keep: u64) -> io::Result<Vec<u8>> {
        let body = self.read_body(keep, keep).await?;
        self.skip(len - keep).await?;
        Ok(body)
    }

    /// Reads past `len` bytes without keeping them.
    async fn skip(&mut self, len: u64) -> io::Result<()> {
        let skipped =
            tokio::io::copy(&mut (&mut self.stream).take(len), &mut tokio::io::sink()).await?;
        if skipped < len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Receives one multipart message of at most `max` bytes, skipping commands (a peer's
    /// PING or ERROR). Of a larger one, read to its end, only its first `max` bytes are kept.
    pub async fn recv(&mut self, max: u64) -> io::Result<Received> {
        let mut frames = Vec::new();
        let (mut size, mut count) = (0u64, 0usize);
        loop {
            let (flags, len) = self.read_head().await?;
            if flags & FLAG_COMMAND != 0 {
                if self
                    .read_body(len, MAX_COMMAND)
                    .await?
                    .starts_with(b"\x05ERROR")
                {
                    return Err(bad("the peer sent ERROR"));
                }
                continue;
            }
            count += 1;
            if count > MAX_FRAMES {
                return Err(bad("too many frames in one message"));
            }
            let room = max.saturating_sub(size);
            size = size.saturating_add(len);
            if len <= room {
                frames.push(self.read_body(len, max).await?);
            } else if room > 0 {
                frames.push(self.read_prefix(len, room).await?);
            } else {
                self.skip(len).await?;
            }
            if flags & FLAG_MORE == 0 {
                return Ok(if size > max {
                    Received::TooLarge {
                        prefix: frames,
                        size,
                    }
                } else {
                    Received::Frames(frames)
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_message_over_the_limit_is_read_past_its_prefix_and_the_next_one_arrives() {
        let (ours, peer) = UnixStream::pair().unwrap();
        let (mut ours, mut peer) = (Socket { stream: ours }, Socket { stream: peer });
        let big = vec![b'z'; 3000];
        peer.send(&[b"head", &big, b"tail"]).await.unwrap();
        peer.send(&[b"small", b"one"]).await.unwrap();
        match ours.recv(1000).await.unwrap() {
            Received::TooLarge { prefix, size } => {
                assert_eq!(size, 3008);
                assert_eq!(prefix, [b"head".to_vec(), vec![b'z'; 996]]);
            }
            Received::Frames(_) => panic!("a message over the limit was taken whole"),
        }
        match ours.recv(1000).await.unwrap() {
            Received::Frames(frames) => assert_eq!(frames, [b"small".to_vec(), b"one".to_vec()]),
            Received::TooLarge { .. } => panic!("the second message was dropped"),
        }
    }
}
