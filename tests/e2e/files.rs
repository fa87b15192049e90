//! The files API: every operation, its errors and its limits.

use std::sync::OnceLock;

use base64::Engine as _;
use cella_e2e::{Server, answer_of, assert_refused, chunked as chunked_body, json_of};
use reqwest::blocking::multipart::{Form, Part};
use serde_json::json;

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start)
}

#[test]
fn write_read_stat_list() {
    let s = server();
    let id = s.sandbox(json!({}));
    let f = |p: &str| format!("/sandboxes/{id}/files{p}");
    let w = json_of(s.post(
        &f("/write"),
        json!({"path": "deep/er/note.txt", "content": "héllo\n", "mode": "600"}),
    ));
    assert_eq!(w["path"], "/home/user/deep/er/note.txt");
    assert_eq!(w["mode"], 0o600);
    assert_eq!(w["size"], 7);
    // Files the API writes belong to the sandbox user, so its programs may change them.
    assert_eq!(
        s.sh(
            &id,
            "echo more >> deep/er/note.txt && stat -c %U deep/er/note.txt"
        )["stdout"],
        "user\n"
    );

    let r = json_of(s.get(&f("/read?path=deep/er/note.txt")));
    assert_eq!(
        (r["encoding"].as_str(), r["content"].as_str()),
        (Some("utf-8"), Some("héllo\nmore\n"))
    );

    let bin = base64::engine::general_purpose::STANDARD.encode([0u8, 159, 146, 150]);
    s.post(
        &f("/write"),
        json!({"path": "/tmp/bin", "content": bin, "encoding": "base64"}),
    );
    let r = json_of(s.get(&f("/read?path=/tmp/bin")));
    assert_eq!(
        (r["encoding"].as_str(), r["content"].as_str()),
        (Some("base64"), Some(bin.as_str()))
    );

    let st = json_of(s.get(&f("/stat?path=deep")));
    assert_eq!(st["kind"], "dir");
    let root = json_of(s.get(&f("/stat?path=/")));
    assert_eq!(root["kind"], "dir");

    let one = json_of(s.get(&f("/list?path=deep")));
    assert_eq!(one.as_array().unwrap().len(), 1);
    let all = json_of(s.get(&f("/list?path=deep&depth=5")));
    let paths: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/home/user/deep/er", "/home/user/deep/er/note.txt"]);
    // A listing too long to answer whole is refused, not cut short without a word (the host
    // image's toolchains alone hold well over the 100000 entries answered at most).
    assert_refused(
        s.get(&f("/list?path=/&depth=32")),
        413,
        "more than 100000 entries",
    );
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn upload_download_raw_and_multipart() {
    let s = server();
    let id = s.sandbox(json!({}));
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let r = s
        .http
        .put(s.api(&format!("/sandboxes/{id}/files?path=/tmp/blob&mode=755")))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r)["mode"], 0o755);
    let got = s
        .http
        .get(s.api(&format!("/sandboxes/{id}/files?path=/tmp/blob")))
        .send()
        .unwrap();
    assert_eq!(
        got.headers()["content-disposition"],
        "attachment; filename*=UTF-8''blob"
    );
    assert_eq!(got.bytes().unwrap().as_ref(), data.as_slice());
    assert_eq!(
        s.sh(&id, "md5sum < /tmp/blob | cut -c1-8")["stdout"]
            .as_str()
            .unwrap()
            .len(),
        9
    );

    let form = Form::new().text("path", "uploads/").part(
        "file",
        Part::bytes(b"print('up')\n".to_vec()).file_name("main.py"),
    );
    let r = s
        .http
        .post(s.api(&format!("/sandboxes/{id}/files/upload")))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(json_of(r)[0]["path"], "/home/user/uploads/main.py");
    assert_eq!(s.sh(&id, "python3 uploads/main.py")["stdout"], "up\n");

    let r = s
        .http
        .post(s.api(&format!("/sandboxes/{id}/files/upload")))
        .multipart(Form::new().text("path", "x"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn mkdir_move_remove_and_their_errors() {
    let s = server();
    let id = s.sandbox(json!({}));
    let f = |p: &str| format!("/sandboxes/{id}/files{p}");
    assert_eq!(s.post(&f("/mkdir"), json!({"path": "a/b/c"})).status(), 200);
    assert_eq!(
        s.post(&f("/mkdir"), json!({"path": "a/b/c", "parents": false}))
            .status(),
        409
    );
    assert_eq!(
        s.post(&f("/mkdir"), json!({"path": "x/y", "parents": false}))
            .status(),
        404
    );
    s.post(&f("/write"), json!({"path": "a/b/c/f", "content": "1"}));
    let m = s.post(
        &f("/move"),
        json!({"source": "a/b/c/f", "destination": "a/g"}),
    );
    assert_eq!(m.status(), 200);
    assert_eq!(json_of(m)["path"], "/home/user/a/g");
    // Each refused move names the path at fault and why.
    let refused = |source: &str, destination: &str, status: u16, says: &str| {
        let r = s.post(
            &f("/move"),
            json!({"source": source, "destination": destination}),
        );
        assert_refused(r, status, says);
    };
    refused("nope", "a/h", 404, "/home/user/nope");
    refused("a/g", "/no/dir/g", 404, "/no/dir/g");
    refused(
        "a",
        "a/b/c/a",
        400,
        "/home/user/a: a directory cannot move into itself",
    );
    // Moves are the sandbox user's: the image's directories are not theirs to change.
    refused("/usr/bin", "u", 400, "/usr/bin: permission denied");
    refused("a/g", "/usr/g", 400, "/usr/g: permission denied");
    refused("/proc", "p", 400, "/proc: a mount point of the sandbox");

    assert_eq!(
        s.delete(&f("?path=a")).status(),
        409,
        "non-empty directory without recursive"
    );
    assert_eq!(s.delete(&f("?path=a&recursive=true")).status(), 204);
    // The sandbox's own mounts are no files to remove: from the host's side they would go
    // without a trace, detached from under the sandbox.
    for mount in ["/proc", "/dev", "/sys"] {
        let r = s.delete(&f(&format!("?path={mount}&recursive=true")));
        assert_refused(r, 400, &format!("{mount}: a mount point of the sandbox"));
    }
    let r = s.sh(
        &id,
        "head -c 4 /proc/self/stat >/dev/null && echo still mounted",
    );
    assert_eq!(r["stdout"], "still mounted\n", "{r}");
    assert_eq!(s.get(&f("/stat?path=a")).status(), 404);
    assert_eq!(s.delete(&f("?path=a")).status(), 404);

    assert_eq!(
        s.get(&f("/read?path=/tmp")).status(),
        400,
        "reading a directory"
    );
    assert_eq!(s.get(&f("/read?path=")).status(), 400);
    assert_eq!(s.get(&f("/read")).status(), 400, "missing path");
    assert_eq!(
        s.post(&f("/write"), json!({"path": "/tmp/", "content": ""}))
            .status(),
        400
    );
    assert_eq!(
        s.post(
            &f("/write"),
            json!({"path": "z", "content": "!", "encoding": "base64"})
        )
        .status(),
        400
    );
    assert_eq!(
        s.post(
            &f("/write"),
            json!({"path": "z", "content": "", "mode": "999"})
        )
        .status(),
        400
    );
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn read_size_is_limited() {
    let s = Server::start_with(&[("CELLA_LIMITS__MAX_READ_BYTES", "1000")]);
    let id = s.sandbox(json!({}));
    s.sh(&id, "head -c 2000 /dev/zero > big");
    let r = s.get(&format!("/sandboxes/{id}/files/read?path=big"));
    assert_eq!(r.status(), 413);
    // Download streams and has no such limit.
    let d = s
        .http
        .get(s.api(&format!("/sandboxes/{id}/files?path=big")))
        .send()
        .unwrap();
    assert_eq!(d.bytes().unwrap().len(), 2000);

    // A run's fetched files share one such limit, however many names they are asked by.
    let r = json_of(s.post(
        "/runs",
        json!({"language": "bash", "code": "head -c 600 /dev/zero > f; head -c 300 /dev/zero > g",
               "fetch_files": ["f", "./f", "/home/user/f", "g"]}),
    ));
    assert_eq!(r["status"], "success", "{r}");
    let files = r["files"].as_object().unwrap();
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(names, ["f", "g"], "{r}");
}

#[test]
fn planted_fifos_and_sockets_are_refused_not_waited_on() {
    let s = server();
    let id = s.sandbox(json!({}));
    let f = |p: &str| format!("/sandboxes/{id}/files{p}");
    s.sh(
        &id,
        "mkfifo lonely held; python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind(\"sock\")'",
    );
    // A reader keeps `held` open, so opening it to write would succeed at once.
    let held = s.post(
        &format!("/sandboxes/{id}/processes"),
        json!({"shell": "exec 3<>held; sleep 60"}),
    );
    assert_eq!(held.status(), 201);
    for fifo in ["lonely", "held", "sock"] {
        let refused = |r| assert_refused(r, 400, "not a regular file");
        let put = s.http.put(s.api(&f(&format!("?path={fifo}")))).body("x");
        refused(put.send().unwrap());
        refused(s.post(&f("/write"), json!({"path": fifo, "content": "x"})));
        refused(s.get(&f(&format!("/read?path={fifo}"))));
        refused(s.get(&f(&format!("?path={fifo}"))));
    }
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn an_upload_cut_short_leaves_the_file_as_it_was() {
    let s = Server::start_with(&[("CELLA_LIMITS__MAX_BODY_BYTES", "1000000")]);
    let id = s.sandbox(json!({}));
    s.sh(&id, "mkdir up; echo before > up/kept");
    let refused = |head: String, body: &[u8]| {
        let chunked = format!("{head}\r\nTransfer-Encoding: chunked");
        let (status, answer) = answer_of(s.send_raw(&chunked, &chunked_body(body, 64 << 10)));
        assert_eq!(status, 413, "{answer}");
        assert!(answer.to_string().contains("max_body_bytes"), "{answer}");
    };
    // Streamed without a length, a body is found too large only part way through; the file
    // being written by then is dropped.
    refused(
        format!("PUT /api/v1/sandboxes/{id}/files?path=up/kept"),
        &[b'x'; 1_100_000],
    );
    let mut form = b"--b\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\nup/kept\r\n\
        --b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"kept\"\r\n\r\n"
        .to_vec();
    form.extend_from_slice(&[b'y'; 1_100_000]);
    form.extend_from_slice(b"\r\n--b--\r\n");
    refused(
        format!(
            "POST /api/v1/sandboxes/{id}/files/upload\r\nContent-Type: multipart/form-data; boundary=b"
        ),
        &form,
    );
    // A directory in the way is refused before the body is taken.
    let put = |path: &str, body: &'static str| {
        s.send(
            s.http
                .put(s.api(&format!("/sandboxes/{id}/files?path={path}")))
                .body(body),
        )
    };
    assert_refused(put("up", "z"), 400, "is a directory");
    let r = s.sh(&id, "ls -A up; cat up/kept");
    assert_eq!(r["stdout"], "kept\nbefore\n", "{r}");
    // A whole upload replaces the file.
    assert_eq!(put("up/kept", "after\n").status(), 200);
    assert_eq!(
        s.sh(&id, "ls -A up; cat up/kept")["stdout"],
        "kept\nafter\n"
    );
}

/// An upload body that comes slowly: `chunks` pieces of 64 KiB, 10 ms apart.
struct SlowBody {
    chunks: usize,
}

impl std::io::Read for SlowBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.chunks == 0 {
            return Ok(0);
        }
        self.chunks -= 1;
        std::thread::sleep(std::time::Duration::from_millis(10));
        let n = buf.len().min(64 << 10);
        buf[..n].fill(b'x');
        Ok(n)
    }
}

#[test]
fn an_upload_into_a_sandbox_deleted_meanwhile_is_refused() {
    let s = server();
    let id = s.sandbox(json!({}));
    let (http, url) = (
        s.http.clone(),
        s.api(&format!("/sandboxes/{id}/files?path=big")),
    );
    let upload = std::thread::spawn(move || {
        let body = reqwest::blocking::Body::new(SlowBody { chunks: 100 });
        http.put(url).body(body).send().unwrap()
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(s.delete(&format!("/sandboxes/{id}")).status(), 204);
    // Not a success for a file in a filesystem nobody can reach any more.
    assert_refused(
        upload.join().unwrap(),
        409,
        "the sandbox stopped during the upload",
    );
}
