//! `gantry dev` end to end: it brings up the hub, the site and the sample
//! workloads, prints both sides' status, and cleans up after Ctrl-C.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Three consecutive free loopback ports (checked, then released).
fn free_ports() -> u16 {
    for _ in 0..200 {
        let Ok(first) = std::net::TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = first.local_addr() else {
            continue;
        };
        let port = addr.port();
        if port > 65000 {
            continue;
        }
        let rest: Vec<_> = (1..3)
            .filter_map(|i| std::net::TcpListener::bind(("127.0.0.1", port + i)).ok())
            .collect();
        if rest.len() == 2 {
            return port;
        }
    }
    panic!("no three free consecutive ports");
}

#[test]
fn gantry_dev_shows_a_hub_and_a_site_running_the_samples_then_cleans_up() {
    let first = free_ports();
    let mut child = support::gantry()
        .args([
            "dev",
            "--hub-listen",
            "127.0.0.1:0",
            "--first-port",
            &first.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gantry dev");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let ready = loop {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => {
                let done = line.contains("Ctrl-C stops everything");
                seen.push(line);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let text = seen.join("\n");
    assert!(ready, "gantry dev never got ready:\n{text}");
    assert!(
        text.contains("sample workloads pushed from the hub"),
        "{text}"
    );
    assert!(
        text.contains("zigbee-bridge  0        gw-b  Running"),
        "placed by label and Running:\n{text}"
    );
    assert!(
        text.contains("demo-site  yes"),
        "the hub sees the site connected:\n{text}"
    );

    // The client verbs work against it with the credentials it prints.
    let exports = seen
        .iter()
        .find_map(|l| l.trim().strip_prefix("export "))
        .expect("gantry dev says how to reach it");
    let env: Vec<(String, String)> = exports
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let status = support::gantry()
        .args(["--server", &format!("127.0.0.1:{first}"), "status"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .expect("gantry status");
    assert!(
        status.status.success(),
        "gantry status with the printed credentials: {}",
        String::from_utf8_lossy(&status.stderr)
    );

    // The sign-in link it prints opens the live page of the site.
    let link = seen
        .iter()
        .find_map(|l| l.split_whitespace().find(|w| w.contains("/login?token=")))
        .expect("gantry dev prints a sign-in link")
        .to_string();
    let data_dir = env
        .iter()
        .find(|(k, _)| k == "GANTRY_DATA_DIR")
        .map(|(_, v)| v.clone())
        .expect("GANTRY_DATA_DIR");
    let jar = std::env::temp_dir().join(format!("gantry-dev-cookies-{}", std::process::id()));
    let page = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-L", "--cacert"])
        .arg(format!("{data_dir}/pki/ca.crt"))
        .arg("-c")
        .arg(&jar)
        .arg("-b")
        .arg(&jar)
        .arg(&link)
        .output()
        .expect("curl");
    let _ = std::fs::remove_file(&jar);
    let html = String::from_utf8_lossy(&page.stdout);
    for name in ["gw-a", "gw-b", "gw-c", "zigbee-bridge"] {
        assert!(html.contains(name), "{name} on the page: {html}");
    }
    assert!(
        html.contains("EventSource"),
        "the page follows the cluster live"
    );

    let dir = seen
        .iter()
        .find_map(|l| l.strip_prefix("working in "))
        .map(std::path::PathBuf::from)
        .expect("gantry dev says where it works");
    assert!(dir.exists());
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill")
        .success());
    let status = child.wait().expect("wait");
    assert!(
        status.success(),
        "gantry dev exits cleanly after Ctrl-C: {status:?}"
    );
    assert!(!dir.exists(), "gantry dev removed {}", dir.display());
}
