//! The Jupyter messaging wire format (protocol 5.3): `<IDS|MSG>`, an HMAC-SHA256 signature,
//! then header, parent header, metadata and content as JSON frames.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const DELIMITER: &[u8] = b"<IDS|MSG>";

#[derive(Clone)]
pub struct Session {
    key: Vec<u8>,
    id: String,
}

#[derive(Debug)]
pub struct Message {
    pub header: Value,
    pub parent: Value,
    pub content: Value,
    /// Bytes of the content frame, for output accounting.
    pub size: usize,
}

impl Message {
    pub fn msg_type(&self) -> &str {
        self.header["msg_type"].as_str().unwrap_or_default()
    }

    pub fn parent_id(&self) -> &str {
        self.parent["msg_id"].as_str().unwrap_or_default()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// UTC now as ISO 8601, as Jupyter headers carry it.
fn now_iso8601() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, micros) = (now.as_secs() as i64, now.subsec_micros());
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Session {
    pub fn new() -> Session {
        Session {
            key: new_id().into_bytes(),
            id: new_id(),
        }
    }

    pub fn key_hex(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }

    fn sign(&self, parts: &[&[u8]]) -> String {
        // HMAC accepts keys of any length; this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p);
        }
        hex(&mac.finalize().into_bytes())
    }

    /// A request's frames, and its message id.
    pub fn encode(&self, msg_type: &str, content: &Value) -> (String, Vec<Vec<u8>>) {
        let id = new_id();
        let header = json!({
            "msg_id": id, "session": self.id, "username": "cella", "date": now_iso8601(),
            "msg_type": msg_type, "version": "5.3",
        });
        let parts: Vec<Vec<u8>> = [header, json!({}), json!({}), content.clone()]
            .iter()
            .map(|v| v.to_string().into_bytes())
            .collect();
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let signature = self.sign(&refs).into_bytes();
        let mut frames = vec![DELIMITER.to_vec(), signature];
        frames.extend(parts);
        (id, frames)
    }

    /// Parses a received message; `None` if it is malformed or its signature is wrong.
    pub fn decode(&self, frames: Vec<Vec<u8>>) -> Option<Message> {
        let rest = signed_parts(&frames)?;
        let parts: Vec<&[u8]> = rest[1..].iter().map(Vec::as_slice).collect();
        let expected = self.sign(&parts);
        // Constant-time comparison of the hex digests.
        let given = &rest[0];
        if given.len() != expected.len()
            || given
                .iter()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                != 0
        {
            return None;
        }
        Some(Message {
            header: serde_json::from_slice(&rest[1]).ok()?,
            parent: serde_json::from_slice(&rest[2]).ok()?,
            content: serde_json::from_slice(&rest[4]).ok()?,
            size: rest[4].len(),
        })
    }

    /// What can be read of a message cut at the reader's limit (`size` bytes whole): a
    /// stream's first text, or that an error was raised, its name and the start of its value
    /// as its traceback shows them. Without the rest its signature cannot be checked; it
    /// comes from the kernel's socket in the sandbox all the same, and is kept only as that
    /// cell's output, marked cut by its size.
    pub fn decode_cut(&self, frames: Vec<Vec<u8>>, size: u64) -> Option<Message> {
        let rest = signed_parts(&frames)?;
        let header: Value = serde_json::from_slice(&rest[1]).ok()?;
        let content = match header["msg_type"].as_str()? {
            // `{"name": ..., "text": "...` cut in the text.
            "stream" => close_cut(&rest[4], &[b"\"}"])?,
            // ipykernel's `{"traceback": ["...", ...` cut in the traceback, which ends with
            // the value; or, in another order, cut in the value.
            "error" => error_of_cut(close_cut(&rest[4], &[b"\"]}", b"\"}"])?),
            _ => return None,
        };
        Some(Message {
            parent: serde_json::from_slice(&rest[2]).ok()?,
            content,
            header,
            size: usize::try_from(size).unwrap_or(usize::MAX),
        })
    }
}

/// The signature, header, parent header, metadata and content after the routing ids and
/// `<IDS|MSG>`.
fn signed_parts(frames: &[Vec<u8>]) -> Option<&[Vec<u8>]> {
    let at = frames.iter().position(|f| f == DELIMITER)?;
    frames.get(at + 1..at + 6)
}

/// JSON cut inside a string, closed there by the first of `closers` that parses. Up to 12
/// bytes before the cut are let go as needed: a cut escape, surrogate pair or UTF-8 sequence
/// does not parse.
fn close_cut(cut: &[u8], closers: &[&[u8]]) -> Option<Value> {
    let mut json = cut.to_vec();
    for _ in 0..=12 {
        for closer in closers {
            json.extend_from_slice(closer);
            let closed = serde_json::from_slice(&json);
            json.truncate(json.len() - closer.len());
            if let Ok(value) = closed {
                return Some(value);
            }
        }
        json.pop()?;
    }
    None
}

/// A cut error's content: its name and (the start of) its value, from its own fields when
/// they came before the cut, else from the start of its IPython traceback: a rule, then
/// `<name>   Traceback (most recent call last)`, the frames, and `<name>: <value>`. A
/// traceback of another shape still tells that an error was raised.
fn error_of_cut(content: Value) -> Value {
    if let Some(name) = content["ename"].as_str() {
        let value = content["evalue"].as_str().unwrap_or_default();
        return json!({"ename": name, "evalue": value, "traceback": []});
    }
    let lines: Vec<String> = content["traceback"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str().map(without_colours))
        .collect();
    let name = lines
        .get(1)
        .and_then(|header| header.split_whitespace().next())
        .filter(|n| {
            n.chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
        })
        .unwrap_or("Error");
    let value = lines
        .last()
        .and_then(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .unwrap_or_default();
    json!({"ename": name, "evalue": value, "traceback": []})
}

/// Text without its ANSI colour sequences (`ESC [ ... letter`).
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip_and_tamper() {
        let s = Session::new();
        let (id, mut frames) = s.encode("kernel_info_request", &json!({"a": 1}));
        frames.insert(0, b"topic".to_vec());
        let m = s.decode(frames.clone()).unwrap();
        assert_eq!(m.msg_type(), "kernel_info_request");
        assert_eq!(m.header["msg_id"], id);
        assert_eq!(m.content["a"], 1);
        frames[5] = b"{\"a\": 2}".to_vec();
        assert!(
            s.decode(frames).is_none(),
            "a tampered message must be rejected"
        );
        assert!(s.decode(vec![b"junk".to_vec()]).is_none());
    }

    #[test]
    fn a_cut_stream_message_keeps_its_first_text() {
        let s = Session::new();
        let content = json!({"name": "stdout", "text": "ab\\c\u{e9}\u{1f600}\"d\n"});
        let (_, frames) = s.encode("stream", &content);
        let whole = frames[5].len();
        // Every cut inside the text, however it splits an escape or a character, gives a
        // prefix of the text.
        let start = whole - content["text"].to_string().len() + 1;
        for cut in start..whole - 2 {
            let mut cut_frames = frames.clone();
            cut_frames[5].truncate(cut);
            let m = s.decode_cut(cut_frames, whole as u64).expect("decodes");
            assert_eq!(m.content["name"], "stdout");
            let text = m.content["text"].as_str().unwrap();
            assert!(
                content["text"].as_str().unwrap().starts_with(text),
                "{cut}: {text:?}"
            );
            assert_eq!(m.size, whole);
        }
        let (_, mut other) = s.encode("display_data", &json!({"data": {"text/plain": "x"}}));
        other[5].truncate(20);
        assert!(
            s.decode_cut(other, 100).is_none(),
            "a cut display is not kept"
        );
    }

    #[test]
    fn a_cut_error_keeps_its_name_and_the_start_of_its_value() {
        let s = Session::new();
        let traceback = [
            "\u{1b}[0;31m-----\u{1b}[0m",
            "\u{1b}[0;31mValueError\u{1b}[0m     Traceback (most recent call last)",
            "Cell \u{1b}[0;32mIn [1], line 1\u{1b}[0m\n----> 1 raise ValueError('v' * 9)",
            "\u{1b}[0;31mValueError\u{1b}[0m: vvvvvvvvv",
        ];
        // In ipykernel's order, the traceback first.
        let (_, mut frames) = s.encode("error", &json!({}));
        frames[5] = format!(
            r#"{{"traceback": {}, "ename": "ValueError", "evalue": "vvvvvvvvv"}}"#,
            json!(traceback)
        )
        .into_bytes();
        let whole = frames[5].clone();
        let value_starts = String::from_utf8_lossy(&whole).find(": vvv").unwrap() + 2;
        let cut = |at: usize| {
            let mut cut_frames = frames.clone();
            cut_frames[5].truncate(at);
            s.decode_cut(cut_frames, whole.len() as u64)
                .unwrap()
                .content
        };
        assert_eq!(
            cut(value_starts + 4),
            json!({"ename": "ValueError", "evalue": "vvvv", "traceback": []})
        );
        // Cut before its last line: the name, no value; before its header: that it failed.
        assert_eq!(cut(value_starts - 30)["ename"], "ValueError");
        assert_eq!(cut(value_starts - 30)["evalue"], "");
        assert_eq!(cut(20)["ename"], "Error");
        // Its own fields first: they are read as they are.
        let content = json!({"ename": "KeyError", "evalue": "kkkkkkkk", "traceback": traceback});
        let (_, mut frames) = s.encode("error", &content);
        let at = String::from_utf8_lossy(&frames[5]).find("kkkk").unwrap() + 3;
        frames[5].truncate(at);
        let content = s.decode_cut(frames, 1000).unwrap().content;
        assert_eq!(
            content,
            json!({"ename": "KeyError", "evalue": "kkk", "traceback": []})
        );
    }

    #[test]
    fn dates() {
        let d = now_iso8601();
        assert_eq!(d.len(), 27, "{d}");
        assert!(d.starts_with("20") && d.ends_with('Z'));
    }
}
