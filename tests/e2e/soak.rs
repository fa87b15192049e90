//! Load on contexts: 100 contexts over 20 sandboxes at once, and 1,000 calls on one context,
//! leave the server with no more descriptors, threads or memory than they found.

use std::collections::BTreeMap;

use cella_e2e::{Server, json_of};
use serde_json::json;

/// The server's open descriptors, threads and resident memory (KiB).
fn footprint(s: &Server) -> (usize, u64, u64) {
    let pid = s.pid();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field: BTreeMap<&str, u64> = status
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k, v.split_whitespace().next()?.parse().ok()?))
        })
        .collect();
    (fds, field["Threads"], field["VmRSS"])
}

/// 100 contexts in 20 sandboxes, each made and called at once, then all deleted.
fn hundred_contexts(s: &Server) {
    let sandboxes: Vec<String> = (0..20).map(|_| s.sandbox(json!({}))).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..100)
            .map(|i| {
                let id = &sandboxes[i % 20];
                scope.spawn(move || {
                    let c = s.context(id, json!({}));
                    let r = s.execute(id, &c, &format!("{i} * 2"), json!({}));
                    assert_eq!(
                        r["events"][0]["data"]["text/plain"],
                        (i * 2).to_string(),
                        "{r}"
                    );
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    });
    for id in &sandboxes {
        assert_eq!(
            json_of(s.get(&format!("/sandboxes/{id}/contexts")))
                .as_array()
                .unwrap()
                .len(),
            5
        );
        s.delete(&format!("/sandboxes/{id}"));
    }
}

#[test]
fn contexts_under_load_leave_nothing_behind() {
    // 100 kernels asked for at once queue for this box's two cores for most of a minute: the
    // start timeout is raised so that what is measured is growth, not a 2-core box's latency.
    let s = Server::start_with(&[("CELLA_CONTEXTS__START_TIMEOUT_SECS", "300")]);
    // Once first, so what the server keeps for good (zygotes, pools, the runtime's threads)
    // is there before measuring.
    hundred_contexts(&s);
    let id = s.sandbox(json!({}));
    let c = s.context(&id, json!({}));
    for i in 0..50 {
        s.execute(&id, &c, &format!("x = {i}"), json!({}));
    }
    let before = footprint(&s);

    hundred_contexts(&s);
    for i in 0..1000 {
        let r = s.execute(&id, &c, &format!("x = {i}\nprint(x)"), json!({}));
        assert_eq!(r["stdout"], format!("{i}\n"));
    }
    let r = s.execute(&id, &c, "x", json!({}));
    assert_eq!(r["events"][0]["data"]["text/plain"], "999");
    s.delete(&format!("/sandboxes/{id}"));

    let after = footprint(&s);
    eprintln!("server footprint (fds, threads, RSS KiB): before {before:?}, after {after:?}");
    assert!(
        after.0 <= before.0 + 4,
        "descriptors grew: {before:?} -> {after:?}"
    );
    // The runtime's blocking threads come and go (idle ones leave after 10 s).
    assert!(
        after.1 <= before.1 + 16,
        "threads grew: {before:?} -> {after:?}"
    );
    assert!(
        after.2 <= before.2 + (32 << 10),
        "memory grew: {before:?} -> {after:?}"
    );
}
