//! The daemon plumbing around the binary: the systemd units in `dist/`
//! pass `systemd-analyze verify` with nothing to say (it exits 0 on an
//! unknown key, so its stderr is checked), a gateway and the hub say
//! READY=1 on `$NOTIFY_SOCKET` once they serve and a gateway feeds the
//! watchdog, the man pages and shell completions come out of the binary,
//! and `gantry check` gives a verdict per thing a gateway needs.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{gantry, gantry_bin, TestCluster};

fn man_pages(dir: &std::path::Path) {
    let out = gantry()
        .args(["man"])
        .arg(dir.join("man1"))
        .output()
        .expect("gantry man");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_units_verify_clean_and_the_man_pages_and_completions_work() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let man = tmp.path().join("man");
    man_pages(&man);
    let page = std::fs::read_to_string(man.join("man1/gantry-apply.1")).expect("gantry-apply.1");
    assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    assert!(man.join("man1/gantry.1").exists());
    for unit in ["gantry.service", "gantry-hub.service"] {
        let text = std::fs::read_to_string(format!("{}/dist/{unit}", env!("CARGO_MANIFEST_DIR")))
            .expect("the unit");
        // The installed path, as the unit's header says, is this build.
        let local = tmp.path().join(unit);
        std::fs::write(&local, text.replace("/usr/local/bin/gantry", &gantry_bin()))
            .expect("write the unit");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&local)
            .env("MANPATH", &man)
            .output()
            .expect("systemd-analyze (Debian's systemd package)");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{unit}: {said}"
        );
    }

    let script = format!(
        "source <({} completion bash); COMP_WORDS=(gantry dr); COMP_CWORD=1; _gantry gantry dr gantry; echo \"${{COMPREPLY[@]}}\"",
        gantry_bin()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "drain");
    for shell in ["zsh", "fish"] {
        let out = gantry()
            .args(["completion", shell])
            .output()
            .expect("completion");
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    let out = gantry()
        .args(["completion", "tcsh"])
        .output()
        .expect("completion");
    assert!(!out.status.success(), "an unknown shell is refused");
}

/// Datagrams on `socket` until one contains `wanted` (or the deadline).
fn until(socket: &UnixDatagram, wanted: &str, limit: Duration) -> Vec<String> {
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    while start.elapsed() < limit {
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = text.contains(wanted);
            seen.push(text);
            if done {
                return seen;
            }
        }
    }
    panic!("no {wanted:?} within {limit:?}; got {seen:?}");
}

#[test]
fn a_gateway_and_the_hub_tell_systemd_they_serve_and_the_gateway_feeds_the_watchdog() {
    let mut cluster = TestCluster::new();
    let socket_path = cluster.tmp.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let path = socket_path.to_string_lossy().to_string();
    cluster.env.push(("NOTIFY_SOCKET".into(), path.clone()));
    cluster.env.push(("WATCHDOG_USEC".into(), "2000000".into()));
    cluster.init("gw-a", &[]);
    let seen = until(&socket, "READY=1", Duration::from_secs(60));
    let ready = seen.last().expect("a message");
    assert!(ready.contains("STATUS="), "{ready}");
    // It serves by then: the CLI gets an answer.
    let status = cluster.json(&cluster.addr(0), &["status"]);
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(1));
    let seen = until(&socket, "WATCHDOG=1", Duration::from_secs(30));
    let ping = seen.last().expect("a message");
    assert!(
        ping.contains("STATUS=leader gw-a, 1/1 gateways Ready"),
        "{ping}"
    );

    // The hub, started with the same environment.
    let hub_dir = cluster.tmp.path().join("hub");
    let mut hub = gantry()
        .args(["hub", "serve", "--data-dir"])
        .arg(&hub_dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("gantry hub serve");
    let seen = until(&socket, "serving on 127.0.0.1:", Duration::from_secs(60));
    assert!(
        seen.last().is_some_and(|m| m.contains("READY=1")),
        "{seen:?}"
    );
    // The gateway feeds its watchdog too: wait for a ping that is the
    // hub's alone (no STATUS line with it).
    let start = Instant::now();
    let mut hub_ping = false;
    let mut buf = vec![0u8; 4096];
    while !hub_ping && start.elapsed() < Duration::from_secs(30) {
        if let Ok(n) = socket.recv(&mut buf) {
            hub_ping = &buf[..n] == b"WATCHDOG=1";
        }
    }
    let _ = hub.kill();
    let _ = hub.wait();
    assert!(hub_ping, "the hub feeds its watchdog");
}

#[test]
fn gantry_check_reports_each_thing_a_gateway_needs() {
    let mut cluster = TestCluster::new();
    cluster.init("gw-a", &[]);
    let addr = cluster.addr(0);
    let dir = cluster.gateways[0].dir.clone();
    let socket = cluster.containerd.socket();
    let check = |socket: &str| {
        gantry()
            .args(["check", "--data-dir"])
            .arg(&dir)
            .args(["--containerd-socket", socket])
            .output()
            .expect("gantry check")
    };
    let out = check(socket.to_str().expect("utf-8"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    let line = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no {name} line: {text}"))
            .to_string()
    };
    assert!(line("containerd").starts_with("ok"), "{text}");
    assert!(line("data").contains("gateway gw-a"), "{text}");
    assert_eq!(
        line("port"),
        format!("ok    port         {addr}: a gateway serves on it")
    );
    assert!(line("certificate").starts_with("ok"), "{text}");
    assert!(line("certificate").contains("more days"), "{text}");
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.starts_with("verdict: ")),
        "{text}"
    );
    assert!(!text.contains("FAIL"), "{text}");

    let out = check("/nonexistent/containerd.sock");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL  containerd   cannot reach /nonexistent/containerd.sock")),
        "{text}"
    );
    let out = gantry()
        .args(["check", "-o", "json", "--data-dir"])
        .arg(&dir)
        .args(["--containerd-socket", "/nonexistent/containerd.sock"])
        .output()
        .expect("gantry check -o json");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(doc["failed"].as_u64() >= Some(1), "{doc}");
    assert!(doc["checks"].as_array().is_some_and(|c| c
        .iter()
        .any(|c| c["check"] == "containerd" && c["verdict"] == "FAIL")));
}

/// `image import` draws its progress on stderr when that is a terminal
/// (run under `script`, a pseudo-terminal), and a pipe gets the answer
/// alone, no carriage return or escape sequence in it.
#[test]
fn progress_is_drawn_on_a_terminal_and_never_into_a_pipe() {
    let mut cluster = TestCluster::new();
    let archive = cluster.tmp.path().join("busybox.tar");
    gantry_node::testing::busybox_oci_archive(&archive, "127.0.0.1:5000/gantry/busybox:test")
        .expect("busybox archive (install busybox-static)");
    cluster.init("gw-a", &[]);
    let addr = cluster.addr(0);
    let import = format!(
        "{} --server {addr} image import {} --all",
        gantry_bin(),
        archive.display()
    );
    let piped = Command::new("bash")
        .args(["-c", &import])
        .env("GANTRY_TOKEN_FILE", &cluster.token_file)
        .output()
        .expect("import through a pipe");
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    for stream in [&piped.stdout, &piped.stderr] {
        assert!(
            !stream.iter().any(|b| *b == b'\r' || *b == 0x1b),
            "{}",
            String::from_utf8_lossy(stream)
        );
    }
    let on_terminal = Command::new("script")
        .args(["-qefc", &import, "/dev/null"])
        .env("GANTRY_TOKEN_FILE", &cluster.token_file)
        .output()
        .expect("script (util-linux)");
    let seen = String::from_utf8_lossy(&on_terminal.stdout).to_string();
    assert!(on_terminal.status.success(), "{seen}");
    assert!(
        seen.contains("uploading") || seen.contains("importing"),
        "{seen}"
    );
    assert!(
        seen.contains('\u{1b}'),
        "drawn with escape sequences: {seen:?}"
    );
}
