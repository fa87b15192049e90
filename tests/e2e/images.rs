//! Images end to end: a real registry (Debian's `docker-registry`), images built with umoci
//! from a static busybox and copied with skopeo, pulled, run, committed, pushed, exported and
//! imported through cella; hostile archives refused; a Debian image with Python.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use cella_e2e::{Server, assert_refused, json_of};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

struct Registry {
    child: Child,
    host: String,
    dir: PathBuf,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        Registry::start_with_auth(dir, None)
    }

    /// A registry that wants `user:password` (htpasswd, basic auth).
    fn start_with_auth(dir: &Path, login: Option<(&str, &str)>) -> Registry {
        let port = cella_e2e::free_port();
        let host = format!("127.0.0.1:{port}");
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("config.yml");
        let yml = format!(
            "version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: {host}\n",
            dir.join("data").display()
        );
        let yml = match login {
            Some((user, password)) => {
                let hash = run(Command::new("python3").args([
                    "-c",
                    "import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
                    password,
                ]));
                let htpasswd = dir.join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{}", hash.trim())).unwrap();
                let path = htpasswd.display();
                format!("{yml}auth:\n  htpasswd: {{realm: cella, path: {path}}}\n")
            }
            None => yml,
        };
        std::fs::write(&config, yml).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (scripts/setup.sh installs it)");
        let up = cella_e2e::eventually(10.0, || {
            reqwest::blocking::get(format!("http://{host}/v2/"))
                .is_ok_and(|r| matches!(r.status().as_u16(), 200 | 401))
        });
        assert!(up, "the registry did not start");
        Registry {
            child,
            host,
            dir: dir.to_owned(),
        }
    }

    /// Copies an OCI layout image into the registry as `name` (`busybox:1`).
    fn push_layout(&self, layout: &str, name: &str) {
        self.push_layout_as(layout, name, &[]);
    }

    fn push_layout_as(&self, layout: &str, name: &str, extra: &[&str]) {
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .args(extra)
            .arg(format!("oci:{layout}"))
            .arg(format!("docker://{}/{name}", self.host)));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run a tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A busybox image in an OCI layout at `dir`, tag `busybox`: FOO=bar, working dir /srv.
fn busybox_layout(dir: &Path) -> String {
    let layout = dir.join("layout").display().to_string();
    let bundle = dir.join("bundle");
    run(Command::new("umoci").args(["init", "--layout", &layout]));
    let image = format!("{layout}:busybox");
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    let root = bundle.join("rootfs");
    for d in ["bin", "srv", "etc", "tmp", "mnt", "home/user"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "ls", "cat", "echo", "rm", "mkdir", "pwd", "id", "head", "dd", "wc", "env", "stat",
        "sleep", "test",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/motd"), "from the image\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.env",
        "FOO=bar",
        "--config.workingdir",
        "/srv",
    ]));
    image
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cella-images-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn server_for(registry: &Registry, dir: &Path, extra: &[(&str, &str)]) -> Server {
    let config = dir.join("cella.toml");
    std::fs::write(
        &config,
        format!(
            "[images.registries.\"{}\"]\ninsecure = true\n",
            registry.host
        ),
    )
    .unwrap();
    let mut env = vec![("CELLA_CONFIG", config.to_str().unwrap())];
    env.extend_from_slice(extra);
    Server::start_with(&env)
}

fn pull(s: &Server, reference: &str) -> Value {
    let r = s.post("/images/pull", json!({ "reference": reference }));
    assert_eq!(r.status(), 201, "{}", json_of(r));
    json_of(r)
}

/// Runs a line of busybox's `sh` (these images have no bash).
fn sh(s: &Server, id: &str, line: &str) -> Value {
    s.exec(id, json!({ "command": ["sh", "-c", line] }))
}

fn escape(name: &str) -> String {
    name.replace('/', "%2F")
}

#[test]
fn pull_run_commit_push_export_import() {
    let dir = scratch("lifecycle");
    let registry = Registry::start(&dir.join("registry"));
    registry.push_layout(&busybox_layout(&dir), "busybox:1");
    let s = server_for(&registry, &dir, &[]);
    let reference = format!("{}/busybox:1", registry.host);

    // A streamed pull: progress, then the image.
    let r = s.send(
        reqwest::blocking::Client::new()
            .post(s.api("/images/pull"))
            .json(&json!({ "reference": reference, "stream": true })),
    );
    let lines: Vec<Value> = r
        .text()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "done", "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l["type"] == "progress" && l["progress"]["layers"][0]["state"] == "done")
    );
    let image = &last["image"];
    let layer_blob = lines
        .iter()
        .find_map(|l| l["progress"]["layers"][0]["digest"].as_str())
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    assert_eq!(image["kind"], "oci");
    assert_eq!(image["working_dir"], "/srv");
    assert_eq!(image["layers"].as_array().unwrap().len(), 1);
    // Pulled again at once, twice: one pull serves both, from the store.
    let again = std::thread::scope(|t| {
        let a = t.spawn(|| pull(&s, &reference));
        let b = t.spawn(|| pull(&s, &reference));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(again.0["digest"], image["digest"]);
    assert_eq!(again.1["digest"], image["digest"]);

    // The image's config applies to execs; the image is what the sandbox sees.
    let id = s.sandbox(json!({ "image": reference }));
    let r = sh(
        &s,
        &id,
        "echo $FOO; pwd; cat /etc/motd; id -u; test -e /usr/bin/python3 || echo no python",
    );
    assert_eq!(r["exit_code"], 0, "{r}");
    let out = r["stdout"].as_str().unwrap().to_string();
    assert!(out.starts_with("bar\n/srv\nfrom the image\n"), "{out}");
    assert!(out.ends_with("no python\n"), "{out}");
    let r = s.post(
        &format!("/sandboxes/{id}/exec"),
        json!({ "command": ["python3", "-c", "1"] }),
    );
    assert_refused(r, 400, "python3");
    let r = s.post(
        &format!("/sandboxes/{id}/contexts"),
        json!({ "language": "python" }),
    );
    assert_refused(r, 400, "python3");

    // Commit: what the user wrote becomes a layer; committed again, another one on top.
    let r = sh(
        &s,
        &id,
        "dd if=/dev/zero of=/mnt/data bs=1k count=64 2>/dev/null; echo kept > /home/user/note",
    );
    assert_eq!(r["exit_code"], 0, "{r}");
    let committed = format!("{}/busybox:2", registry.host);
    let r = s.post(
        &format!("/sandboxes/{id}/commit"),
        json!({ "name": committed }),
    );
    assert_eq!(r.status(), 201, "{}", json_of(r));
    let v2 = json_of(r);
    assert_eq!(v2["layers"].as_array().unwrap().len(), 2);
    assert_eq!(
        sh(&s, &id, "echo still running")["stdout"],
        "still running\n"
    );
    let id2 = s.sandbox(json!({ "image": committed }));
    let r = sh(
        &s,
        &id2,
        "wc -c < /mnt/data; cat /home/user/note; echo $FOO; rm /mnt/data && echo removed",
    );
    assert_eq!(r["stdout"], "65536\nkept\nbar\nremoved\n", "{r}");
    // Committed as the image's user (1000), not as the host uid the sandbox ran as.
    assert_eq!(
        sh(&s, &id2, "stat -c %u /home/user/note")["stdout"],
        "1000\n"
    );
    let third = format!("{}/busybox:3", registry.host);
    let r = s.post(
        &format!("/sandboxes/{id2}/commit"),
        json!({ "name": third }),
    );
    assert_eq!(r.status(), 201, "{}", json_of(r));
    assert_eq!(json_of(r)["layers"].as_array().unwrap().len(), 3);
    let id3 = s.sandbox(json!({ "image": third }));
    let r = sh(
        &s,
        &id3,
        "test -e /mnt/data && echo present || echo whited out; cat /home/user/note",
    );
    assert_eq!(r["stdout"], "whited out\nkept\n", "{r}");

    // Push the third to the registry, forget it, and pull it back.
    let r = s.post(&format!("/images/{}/push", escape(&third)), json!({}));
    assert_eq!(r.status(), 200, "{}", json_of(r));
    let inspected: Value = serde_json::from_str(&run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{third}"),
    ])))
    .unwrap();
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 3);
    for sandbox in [&id, &id2, &id3] {
        s.delete(&format!("/sandboxes/{sandbox}"));
    }
    assert_eq!(
        s.delete(&format!("/images/{}", escape(&third))).status(),
        204
    );
    assert_eq!(s.get(&format!("/images/{}", escape(&third))).status(), 404);
    // Named by a sandbox, it is pulled (the policy is `missing`).
    let id4 = s.sandbox(json!({ "image": third }));
    assert_eq!(sh(&s, &id4, "cat /home/user/note")["stdout"], "kept\n");
    s.delete(&format!("/sandboxes/{id4}"));

    // Export, then import under another name; skopeo reads the export too.
    let tarball = dir.join("export.tar");
    let mut r = s.get(&format!("/images/{}/export", escape(&committed)));
    assert_eq!(r.status(), 200);
    r.copy_to(&mut std::fs::File::create(&tarball).unwrap())
        .unwrap();
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci-archive:{}", tarball.display()),
        &format!("docker://{}/busybox:exported", registry.host),
    ]));
    let out = run(Command::new(cella_e2e::cella_bin())
        .args([
            "image",
            "pull",
            &format!("{}/busybox:exported", registry.host),
        ])
        .env("CELLA_SERVER", &s.url));
    assert_eq!(out, format!("{}/busybox:exported\n", registry.host));
    let imported = import(&s, &tarball, Some("local/imported:1"));
    assert_eq!(imported[0]["name"], "docker.io/local/imported:1");
    let id5 = s.sandbox(json!({ "image": "local/imported:1" }));
    assert_eq!(sh(&s, &id5, "cat /home/user/note")["stdout"], "kept\n");
    s.delete(&format!("/sandboxes/{id5}"));
    // A docker-archive (`docker save`) from skopeo imports with its own name.
    let saved = dir.join("saved.tar");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &format!("docker-archive:{}:saved/busybox:9", saved.display()),
    ]));
    let imported = import(&s, &saved, None);
    assert_eq!(imported[0]["name"], "docker.io/saved/busybox:9");

    // The CLI lists it.
    let out = run(Command::new(cella_e2e::cella_bin())
        .args(["image", "ls"])
        .env("CELLA_SERVER", &s.url));
    assert!(out.contains("busybox:1") && out.contains("oci"), "{out}");

    // Removing images collects the layers nothing holds.
    let blob = s.data_dir.join("content/blobs/sha256").join(&layer_blob);
    let half = std::fs::read(&blob).unwrap();
    let half = &half[..half.len() / 2];
    let before = json_of(s.get("/images/usage"));
    let exported = format!("{}/busybox:exported", registry.host);
    for name in [
        "local/imported:1",
        "saved/busybox:9",
        &committed,
        &reference,
        &third,
        &exported,
    ] {
        assert_eq!(
            s.delete(&format!("/images/{}", escape(name))).status(),
            204,
            "{name}"
        );
    }
    let after = json_of(s.get("/images/usage"));
    assert!(
        after["layers"].as_u64() < before["layers"].as_u64(),
        "{before} {after}"
    );
    assert_eq!(after["layers"], 0, "{after}");

    // A pull cut short resumes: half of busybox's layer left in tmp, the rest fetched.
    let partial = s.data_dir.join("content/tmp").join(format!(
        "{}.partial",
        blob.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(&partial, half).unwrap();
    let r = s.send(
        reqwest::blocking::Client::new()
            .post(s.api("/images/pull"))
            .json(&json!({ "reference": reference, "stream": true })),
    );
    let text = r.text().unwrap();
    let resumed = text.lines().any(|l| {
        let v: Value = serde_json::from_str(l).unwrap();
        v["progress"]["layers"][0]["resumed_from"].as_u64() == Some(half.len() as u64)
    });
    assert!(resumed, "{text}");
    assert!(text.lines().last().unwrap().contains("\"done\""), "{text}");
    assert_eq!(
        s.delete(&format!("/images/{}", escape(&reference)))
            .status(),
        204
    );

    // Unknown tags and broken blobs.
    let r = s.post(
        "/images/pull",
        json!({ "reference": format!("{}/busybox:nope", registry.host) }),
    );
    assert_refused(r, 404, "not found");
    let registry_blobs = registry.dir.join("data/docker/registry/v2/blobs/sha256");
    corrupt_a_layer(&registry_blobs);
    let r = s.post(
        "/images/pull",
        json!({ "reference": format!("{}/busybox:1", registry.host) }),
    );
    assert_refused(r, 400, "digest");
    assert!(
        std::fs::read_dir(s.data_dir.join("content/layers"))
            .unwrap()
            .count()
            == 0,
        "no layer of a failed pull is kept"
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_registry_that_wants_a_login() {
    let dir = scratch("login");
    let registry = Registry::start_with_auth(&dir.join("registry"), Some(("ci", "s3cret")));
    registry.push_layout_as(
        &busybox_layout(&dir),
        "team/busybox:1",
        &["--dest-creds", "ci:s3cret"],
    );
    let s = server_for(&registry, &dir, &[]);
    let reference = format!("{}/team/busybox:1", registry.host);
    let r = s.post("/images/pull", json!({ "reference": reference }));
    assert_refused(r, 400, "refused access");
    let r = s.post(
        "/images/pull",
        json!({ "reference": reference, "username": "ci", "password": "wrong" }),
    );
    assert_refused(r, 400, "refused access");
    let login = json!({ "reference": reference, "username": "ci", "password": "s3cret" });
    let r = s.post("/images/pull", login);
    assert_eq!(r.status(), 201, "{}", json_of(r));
    // Pushed back under another tag, with the login; without it, refused.
    let to = format!("{}/team/busybox:2", registry.host);
    let path = format!("/images/{}/push", escape(&reference));
    assert_refused(
        s.post(&path, json!({ "reference": to })),
        400,
        "refused access",
    );
    let r = s.post(
        &path,
        json!({ "reference": to, "username": "ci", "password": "s3cret" }),
    );
    assert_eq!(r.status(), 200, "{}", json_of(r));
    run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--creds",
        "ci:s3cret",
        &format!("docker://{to}"),
    ]));
    drop(s);
    // Credentials from the configuration serve a sandbox that names the image.
    let config = format!(
        "[images.registries.\"{}\"]\ninsecure = true\nusername = \"ci\"\npassword = \"s3cret\"\n",
        registry.host
    );
    std::fs::write(dir.join("login.toml"), config).unwrap();
    let s = Server::start_with(&[("CELLA_CONFIG", dir.join("login.toml").to_str().unwrap())]);
    let id = s.sandbox(json!({ "image": to }));
    assert_eq!(sh(&s, &id, "echo $FOO")["stdout"], "bar\n");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Flips a byte in the largest blob the registry stores (busybox's layer).
fn corrupt_a_layer(blobs: &Path) {
    let datas = std::fs::read_dir(blobs)
        .unwrap()
        .flatten()
        .flat_map(|prefix| {
            std::fs::read_dir(prefix.path())
                .unwrap()
                .flatten()
                .map(|b| b.path().join("data"))
        });
    let path = datas
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
}

fn import(s: &Server, tarball: &Path, name: Option<&str>) -> Vec<Value> {
    let mut url = s.api("/images/import");
    if let Some(name) = name {
        url = format!("{url}?name={name}");
    }
    let r = s.send(
        reqwest::blocking::Client::new()
            .post(url)
            .body(std::fs::read(tarball).unwrap()),
    );
    assert_eq!(r.status(), 201, "{}", json_of(r));
    json_of(r).as_array().unwrap().clone()
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A `docker save` archive of one image with the given layers (tarballs).
fn saved_archive(layers: &[Vec<u8>]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let config = serde_json::to_vec(&config).unwrap();
    let names: Vec<String> = (0..layers.len())
        .map(|i| format!("l{i}/layer.tar"))
        .collect();
    let manifest = json!([{ "Config": "config.json", "RepoTags": ["hostile:1"], "Layers": names }]);
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, data).unwrap();
    };
    add("config.json", &config);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    for (name, layer) in names.iter().zip(layers) {
        add(name, layer);
    }
    tar.into_inner().unwrap()
}

/// A layer tarball with one entry named as given, past the checks of `tar::Builder`.
fn layer_with(name: &str, kind: tar::EntryType, mode: u32, link: &str, data: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let base = busybox_entry();
    tar.append(&base.0, &base.1[..]).unwrap();
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(data.len() as u64);
    h.set_cksum();
    tar.append(&h, data).unwrap();
    tar.into_inner().unwrap()
}

/// `bin/sh`, so that a sandbox of the image can run something.
fn busybox_entry() -> (tar::Header, Vec<u8>) {
    let data = std::fs::read("/bin/busybox").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_path("bin/sh").unwrap();
    h.set_size(data.len() as u64);
    h.set_mode(0o755);
    h.set_cksum();
    (h, data)
}

fn import_raw(s: &Server, archive: Vec<u8>) -> reqwest::blocking::Response {
    s.send(
        reqwest::blocking::Client::new()
            .post(s.api("/images/import?name=hostile:1"))
            .body(archive),
    )
}

#[test]
fn hostile_archives_are_refused() {
    let s = Server::start_with(&[
        ("CELLA_IMAGES__MAX_LAYER_BYTES", "8000000"),
        ("CELLA_IMAGES__MAX_LAYER_ENTRIES", "1000"),
    ]);
    let outside = std::env::temp_dir().join(format!("cella-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&outside);
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"untouched").unwrap();
    let victim = outside.join("victim").display().to_string();
    let layers_dir = s.data_dir.join("content/layers");
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            layer_with("../../escape", tar::EntryType::Regular, 0o644, "", b"x"),
            400,
            "leaves the layer",
        ),
        (
            layer_with(&victim, tar::EntryType::Regular, 0o644, "", b"x"),
            400,
            "absolute path",
        ),
        (
            layer_with("h", tar::EntryType::Link, 0o644, &victim[1..], b""),
            400,
            "not in the layer",
        ),
        (
            layer_with("h", tar::EntryType::Link, 0o644, "../../../etc/passwd", b""),
            400,
            "leaves the layer",
        ),
        (
            layer_with(
                "big",
                tar::EntryType::Regular,
                0o644,
                "",
                &vec![0u8; 9_000_000],
            ),
            413,
            "exceeds the limit",
        ),
        (gzip_bomb(), 413, "exceeds the limit"),
    ];
    for (layer, status, says) in cases {
        let r = import_raw(&s, saved_archive(&[layer]));
        assert_refused(r, status, says);
        assert_eq!(
            std::fs::read_dir(&layers_dir).unwrap().count(),
            0,
            "{says}: no layer left"
        );
        let tmp: Vec<_> = std::fs::read_dir(s.data_dir.join("content/tmp"))
            .unwrap()
            .flatten()
            .collect();
        assert!(tmp.is_empty(), "{says}: {tmp:?} left in tmp");
    }
    // Written through a symlink to a host directory: refused, nothing written there.
    let mut tar = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in [
        (
            "evil",
            tar::EntryType::Symlink,
            outside.to_str().unwrap(),
            &b""[..],
        ),
        ("evil/victim", tar::EntryType::Regular, "", &b"pwned"[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        tar.append(&h, data).unwrap();
    }
    let r = import_raw(&s, saved_archive(&[tar.into_inner().unwrap()]));
    assert_refused(r, 400, "no directory in the layer");
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"untouched");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);

    // Setuid bits are cleared and device nodes dropped; the image still runs.
    let setuid = layer_with(
        "bin/su",
        tar::EntryType::Regular,
        0o4755,
        "",
        b"#!/bin/sh\n",
    );
    let device = layer_with("dev/sda", tar::EntryType::Block, 0o666, "", b"");
    let r = import_raw(&s, saved_archive(&[setuid, device]));
    assert_eq!(r.status(), 201, "{}", json_of(r));
    let id = s.sandbox(json!({ "image": "hostile:1" }));
    let r = sh(
        &s,
        &id,
        "stat -c %a /bin/su; test -e /dev/sda || echo no device",
    );
    assert_eq!(r["stdout"], "755\nno device\n", "{r}");
    // Deleted while a sandbox runs on it, the image's layers stay until that sandbox goes.
    assert_eq!(s.delete("/images/hostile:1").status(), 204);
    assert_eq!(sh(&s, &id, "stat -c %a /bin/su")["stdout"], "755\n");
    assert_eq!(json_of(s.get("/images/usage"))["layers"], 2);
    s.delete(&format!("/sandboxes/{id}"));
    assert_eq!(json_of(s.post("/images/prune", json!({})))["layers"], 2);
    assert_eq!(json_of(s.get("/images/usage"))["layers"], 0);
    // An image with no shell at all starts; what needs one is refused, naming it.
    let empty = {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_path("data/").unwrap();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_cksum();
        tar.append(&h, std::io::empty()).unwrap();
        tar.into_inner().unwrap()
    };
    let r = import_raw(&s, saved_archive(&[empty]));
    assert_eq!(r.status(), 201, "{}", json_of(r));
    let id = s.sandbox(json!({ "image": "hostile:1" }));
    let r = s.post(
        &format!("/sandboxes/{id}/exec"),
        json!({ "command": ["sh", "-c", "true"] }),
    );
    assert_refused(r, 400, "\"sh\"");
    // A broken archive, and one that is no image.
    assert_refused(import_raw(&s, b"not a tar at all".repeat(100)), 400, "");
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_path("hello.txt").unwrap();
    h.set_size(2);
    h.set_cksum();
    tar.append(&h, &b"hi"[..]).unwrap();
    assert_refused(
        import_raw(&s, tar.into_inner().unwrap()),
        400,
        "not an image archive",
    );
    let _ = std::fs::remove_dir_all(&outside);
}

/// 64 MB of zeros in a tar, gzip-compressed to a few dozen KB.
fn gzip_bomb() -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut tar = tar::Builder::new(&mut gz);
    let mut h = tar::Header::new_gnu();
    h.set_path("zeros").unwrap();
    h.set_size(64 << 20);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append(&h, std::io::repeat(0).take_bytes(64 << 20))
        .unwrap();
    tar.finish().unwrap();
    drop(tar);
    gz.finish().unwrap()
}

trait TakeBytes: std::io::Read + Sized {
    fn take_bytes(self, n: u64) -> std::io::Take<Self> {
        self.take(n)
    }
}

impl<R: std::io::Read> TakeBytes for R {}

#[test]
fn a_debian_image_runs_python() {
    const ROOTFS: &str = "/var/cache/cella/debian-python.rootfs";
    assert!(
        Path::new(ROOTFS).join("usr/bin/python3").exists(),
        "{ROOTFS} is missing: scripts/setup.sh builds it"
    );
    let dir = scratch("debian");
    let layer = dir.join("layer.tar");
    run(Command::new("tar")
        .args(["-C", ROOTFS, "--numeric-owner", "-cf"])
        .arg(&layer)
        .arg("."));
    let s = Server::start();
    let archive = saved_archive(&[std::fs::read(&layer).unwrap()]);
    std::fs::write(dir.join("image.tar"), &archive).unwrap();
    drop(archive);
    let imported = import(&s, &dir.join("image.tar"), Some("debian-python:12"));
    assert_eq!(imported[0]["kind"], "oci");
    let id = s.sandbox(json!({ "image": "debian-python:12" }));
    let r = s.exec(
        &id,
        json!({ "command": ["python3", "-c", "import sys; print(sys.version_info[:2], 6 * 7)"] }),
    );
    assert_eq!(r["stdout"], "(3, 11) 42\n", "{r}");
    // A one-shot run in it, on the native runs API.
    let r = s.post(
        "/runs",
        json!({ "language": "python", "code": "import os; print(os.path.exists('/etc/debian_version'), 2 ** 10)", "image": "debian-python:12" }),
    );
    let r = json_of(r);
    assert_eq!(r["run"]["stdout"], "True 1024\n", "{r}");
    s.delete(&format!("/sandboxes/{id}"));
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_host_sandbox_commits_onto_the_host() {
    let s = Server::start();
    let id = s.sandbox(json!({}));
    let r = s.sh(
        &id,
        "echo hi > ~/note && echo m > /mnt/m && pip --version >/dev/null; echo ok",
    );
    assert_eq!(r["stdout"], "ok\n", "{r}");
    let r = s.post(
        &format!("/sandboxes/{id}/commit"),
        json!({ "name": "local/on-host:1" }),
    );
    assert_eq!(r.status(), 201, "{}", json_of(r));
    let image = json_of(r);
    assert_eq!(image["layers"].as_array().unwrap().len(), 1, "{image}");
    s.delete(&format!("/sandboxes/{id}"));

    // The host's root under the layer, its private paths still masked, the home kept.
    let id = s.sandbox(json!({ "image": "local/on-host:1" }));
    let data_dir = s.data_dir.display();
    let r = s.sh(
        &id,
        &format!(
            "cat ~/note /mnt/m; python3 -c 'print(6 * 7)'; ls /home; \
             test -e /etc/shadow || echo shadow masked; test -e {data_dir} || echo data masked; \
             touch ~/new && echo home writable"
        ),
    );
    assert_eq!(
        r["stdout"], "hi\nm\n42\nuser\nshadow masked\ndata masked\nhome writable\n",
        "{r}"
    );
    // It cannot leave this machine.
    let r = s.get("/images/docker.io%2Flocal%2Fon-host:1/export");
    assert_refused(r, 400, "host's root");
    let r = s.post(
        "/images/local%2Fon-host:1/push",
        json!({ "reference": "127.0.0.1:1/x:1" }),
    );
    assert_refused(r, 400, "host's root");
}
