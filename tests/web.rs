//! The web page in a real browser: Debian's headless Chromium driven over
//! WebDriver (chromedriver), against three real gateways. Signs in with
//! `/login?token=`, checks each page shows the cluster's real names, writes
//! a screenshot of each (for the README), then kills a gateway and watches
//! its row turn NotReady through server-sent events, without a reload.
//! Needs `chromium` and `chromium-driver` (scripts/setup.sh installs them);
//! without them it fails, it does not skip.

mod support;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use serde_json::{json, Value};
use support::{wait_for, TestCluster, DEADLINE};

const IMAGE: &str = "127.0.0.1:5000/gantry/busybox:test";

/// A chromedriver on a loopback port, and one browser session in it.
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Browser {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver: scripts/setup.sh installs it)");
        let base = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver to listen", DEADLINE, || {
            let status = call("GET", &format!("{base}/status"), None)?;
            (status["value"]["ready"] == true).then_some(())
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,900"]
            }
        }}});
        let created =
            call("POST", &format!("{base}/session"), Some(&caps)).expect("a WebDriver session");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        Self {
            driver,
            base,
            session,
        }
    }

    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        call(method, &url, body).unwrap_or_else(|| panic!("WebDriver {method} {path} failed"))
    }

    fn go(&self, url: &str) {
        self.command("POST", "/url", Some(&json!({ "url": url })));
    }

    /// The text of the element `css` selects, None while there is none.
    fn text(&self, css: &str) -> Option<String> {
        let found = self.command(
            "POST",
            "/element",
            Some(&json!({"using": "css selector", "value": css})),
        );
        let id = found["value"]
            .as_object()?
            .values()
            .next()?
            .as_str()?
            .to_string();
        let text = self.command("GET", &format!("/element/{id}/text"), None);
        text["value"].as_str().map(String::from)
    }

    fn script(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": []})),
        )["value"]
            .clone()
    }

    fn screenshot(&self, file: &PathBuf) {
        use base64::Engine;
        let shot = self.command("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["value"].as_str().expect("a screenshot"))
            .expect("base64 PNG");
        std::fs::write(file, png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = call("DELETE", &url, None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One WebDriver call over loopback HTTP (curl, as the other tests do).
fn call(method: &str, url: &str, body: Option<&Value>) -> Option<Value> {
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--max-time", "30", "-X", method, url]);
    if let Some(body) = body {
        curl.args([
            "-H",
            "Content-Type: application/json",
            "-d",
            &body.to_string(),
        ]);
    }
    let out = curl.output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// Where the screenshots go: `GANTRY_SCREENSHOTS` (the README's come from
/// there), else the test's own temp dir.
fn shots_dir() -> PathBuf {
    let dir = std::env::var_os("GANTRY_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots"));
    std::fs::create_dir_all(&dir).expect("the screenshot dir");
    dir
}

#[test]
fn the_page_shows_the_cluster_and_follows_a_lost_gateway_without_a_reload() {
    let mut cluster = TestCluster::new();
    cluster.init("gw-a", &[]);
    cluster.join("gw-b", &[]);
    cluster.join("gw-c", &[]);
    let addr = cluster.addr(0);
    cluster.import_busybox(&addr, IMAGE);
    let out = cluster.apply(
        &addr,
        &format!(
            "name: web\nimage: {IMAGE}\nreplicas: 2\ncommand: [sh, -c, 'exec sleep 100000']\n---\nname: camera\nimage: {IMAGE}\nsingleton: true\ncommand: [sh, -c, 'exec sleep 100000']\n---\nname: huge\nimage: {IMAGE}\nresources: {{cpu: \"64\"}}\n"
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let viewer = cluster.viewer_token(&addr);
    wait_for("web and camera Running", DEADLINE, || {
        let instances = cluster.try_json(&addr, &["get", "instances"])?;
        let running = instances
            .as_array()?
            .iter()
            .filter(|i| i["state"] == "Running")
            .count();
        (running == 3).then_some(())
    });

    let browser = Browser::start();
    let base = format!("https://{addr}");
    // Without a token: the sign-in form.
    browser.go(&format!("{base}/"));
    let url = browser.script("return location.pathname;");
    assert_eq!(url, "/login", "an anonymous visit goes to the sign-in form");
    browser.go(&format!("{base}/login?token=not-a-token"));
    assert_eq!(browser.script("return location.pathname;"), "/login");
    browser.go(&format!("{base}/login?token={viewer}"));
    assert_eq!(browser.script("return location.pathname;"), "/");
    let shots = shots_dir();

    // The overview names the real gateways and workloads.
    for gateway in ["gw-a", "gw-b", "gw-c"] {
        let status = browser.text(&format!("#gw-{gateway}-status"));
        assert_eq!(status.as_deref(), Some("Ready"), "{gateway}");
    }
    let leader = browser.text("#leader").expect("the leader");
    assert!(leader.starts_with("gw-"), "{leader}");
    let web = browser.text("#wl-web").expect("the web workload row");
    assert!(web.contains("2 / 2 / 2"), "{web}");
    let huge = browser
        .text("#in-huge-0")
        .expect("the unplaceable instance");
    assert!(
        huge.contains("gateways fit"),
        "the scheduler's reason: {huge}"
    );
    browser.screenshot(&shots.join("overview.png"));

    // On a phone's screen the page does not overflow sideways: wide tables
    // scroll inside their own box.
    browser.command(
        "POST",
        "/window/rect",
        Some(&json!({"width": 390, "height": 844})),
    );
    let overflow = browser.script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
    );
    assert_eq!(overflow, 0, "the page is wider than a phone's screen");
    browser.screenshot(&shots.join("phone.png"));
    browser.command(
        "POST",
        "/window/rect",
        Some(&json!({"width": 1100, "height": 900})),
    );

    browser.go(&format!("{base}/workloads/camera"));
    let running = browser.text("#running").expect("the running count");
    assert_eq!(running, "1");
    browser.screenshot(&shots.join("workload.png"));
    browser.go(&format!("{base}/gateways/gw-b"));
    assert_eq!(browser.text("#status").as_deref(), Some("Ready"));
    browser.screenshot(&shots.join("gateway.png"));

    // A gateway dies: its row turns NotReady on the open page, no reload.
    browser.go(&format!("{base}/"));
    browser.script("window.gantryLoaded = 'same page';");
    let victim = if leader == "gw-c" { "gw-b" } else { "gw-c" };
    let index = cluster.index_of(victim);
    cluster.gateways[index].kill();
    let in_json = wait_for("the gateway NotReady in the status", DEADLINE, || {
        let status = cluster.try_json(&addr, &["status"])?;
        (support::node(&status, victim)["status"] == "NotReady").then(Instant::now)
    });
    wait_for("the row NotReady in the browser", DEADLINE, || {
        let text = browser.text(&format!("#gw-{victim}-status"))?;
        (text == "NotReady").then_some(())
    });
    println!(
        "web: the row turned NotReady {:?} after the status did",
        in_json.elapsed()
    );
    assert_eq!(
        browser.script("return window.gantryLoaded;"),
        "same page",
        "the page was reloaded"
    );
    browser.screenshot(&shots.join("overview-notready.png"));
}

#[test]
fn the_hub_page_lists_sites_and_follows_a_link_going_down() {
    let mut cluster = TestCluster::new();
    let hub = cluster.start_hub();
    cluster.init("gw-a", &[]);
    let addr = cluster.addr(0);
    let site_token = cluster.attach_with(
        &addr,
        "plant-7",
        "name: web\nimage: 127.0.0.1:5000/gantry/img:1\n",
    );
    wait_for("the site in sync", DEADLINE, || {
        let site = cluster.hub_site("plant-7");
        (site["connected"] == true && site["acked_revision"] == 1).then_some(())
    });
    let admin = cluster.hub_admin_token();

    let browser = Browser::start();
    let base = format!("https://{hub}");
    browser.go(&format!("{base}/"));
    assert_eq!(browser.script("return location.pathname;"), "/login");
    // A site token opens nothing here.
    browser.go(&format!("{base}/login?token={site_token}"));
    assert_eq!(browser.script("return location.pathname;"), "/login");
    browser.go(&format!("{base}/login?token={admin}"));
    assert_eq!(browser.script("return location.pathname;"), "/");
    let row = browser.text("#site-plant-7").expect("the site's row");
    assert!(row.contains("1 / 1"), "acked / desired: {row}");
    assert_eq!(
        browser.text("#site-plant-7-link").as_deref(),
        Some("connected")
    );
    let shots = shots_dir();
    browser.screenshot(&shots.join("hub.png"));
    browser.go(&format!("{base}/sites/plant-7"));
    assert_eq!(browser.text("#link").as_deref(), Some("connected"));
    let gateways = browser.text("#gateways").expect("the site's gateways");
    assert!(gateways.contains("gw-a"), "{gateways}");
    browser.screenshot(&shots.join("hub-site.png"));

    // The site detaches: its row says so on the open page.
    browser.go(&format!("{base}/"));
    browser.script("window.gantryLoaded = 'same page';");
    let out = cluster.cli(&addr, &["cloud", "detach"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the row disconnected in the browser", DEADLINE, || {
        let text = browser.text("#site-plant-7-link")?;
        (text == "disconnected").then_some(())
    });
    assert_eq!(
        browser.script("return window.gantryLoaded;"),
        "same page",
        "the page was reloaded"
    );
}
