//! Test harness: real `gantry` processes on loopback, each with its own
//! data dir in a temp dir, driven through the CLI like an operator would,
//! over TLS with tokens: after `init` the harness makes an admin token
//! (`gantry token create`) and every CLI call carries it through
//! `GANTRY_TOKEN_FILE`. Ports are chosen by the gateways themselves
//! (`--listen 127.0.0.1:0`) and read back from their data dir, so tests
//! never race for fixed ports. A daemon's stderr (its log) and stdout (what
//! it prints for the operator, like the join token) go to separate files.

#![allow(dead_code)]

pub mod blackhole;
pub mod broker;
pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const DEADLINE: Duration = Duration::from_secs(60);

/// The binary under test: Cargo's, unless `GANTRY_TEST_BIN` names another.
/// Two checkouts sharing one target dir share `target/debug/gantry`, and
/// the last build wins; a run that must test its own checkout's code
/// points this at a private copy.
pub fn gantry_bin() -> String {
    std::env::var("GANTRY_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_gantry").to_string())
}

/// Polls `check` until it returns Some, or panics with `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Gateway {
    pub name: String,
    pub dir: PathBuf,
    /// stderr: the daemon's log.
    pub log: PathBuf,
    pub child: Option<Child>,
    /// The network namespace it runs in (`netns::Topology`), if any.
    pub netns: Option<String>,
    /// Environment it gets again at every restart (a fake clock's).
    pub kept_env: Vec<(String, String)>,
}

/// Where a daemon's stdout goes (next to its log).
pub fn stdout_of(log: &Path) -> PathBuf {
    log.with_extension("out")
}

/// The credential environment variables a developer's shell may hold;
/// tests set their own.
const CREDENTIAL_ENV: &[&str] = &[
    "GANTRY_TOKEN",
    "GANTRY_TOKEN_FILE",
    "GANTRY_CA_FILE",
    "GANTRY_DATA_DIR",
    "GANTRY_HUB_TOKEN",
    "GANTRY_HUB_DATA_DIR",
    "GANTRY_SITE_TOKEN",
    "GANTRY_JOIN_TOKEN",
    "GANTRY_SERVER",
    "GANTRY_HUB",
];

/// A `gantry` command without any credential from the caller's shell.
pub fn gantry() -> Command {
    gantry_in(None)
}

/// `gantry`, inside network namespace `netns` when given.
pub fn gantry_in(netns: Option<&str>) -> Command {
    let mut command = match netns {
        Some(ns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", ns]).arg(gantry_bin());
            command
        }
        None => Command::new(gantry_bin()),
    };
    for name in CREDENTIAL_ENV {
        command.env_remove(name);
    }
    command
}

impl Gateway {
    pub fn config(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.dir.join("gantry.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The address it serves on, once it has written its config.
    pub fn addr(&self) -> String {
        wait_for(
            &format!("{} to write its config", self.name),
            DEADLINE,
            || {
                self.config()
                    .and_then(|c| c["advertise"].as_str().map(String::from))
            },
        )
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// kill -9 of the process we started, as a power cut would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `gantry run --data-dir DIR`.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        self.child = Some(spawn_with_env(
            &["run", "--data-dir", path_str(&self.dir)],
            &self.log,
            &self.kept_env,
            self.netns.as_deref(),
        ));
    }

    /// Steps this gateway's wall clock to `seconds` off the machine's
    /// (its clock is a fake one: `TestCluster::with_fake_clocks`); the
    /// monotonic and boot clocks keep true time, as with an NTP step.
    pub fn set_clock_offset(&self, seconds: i64) {
        assert!(
            !self.kept_env.is_empty(),
            "{} was not started with a fake clock",
            self.name
        );
        std::fs::write(clock_file(&self.log), format!("{seconds:+}\n"))
            .expect("write the fake clock's offset");
    }

    /// Cuts every gateway-to-gateway call in or out of this gateway
    /// (`GANTRY_FAULT_FILE`), as a network partition would.
    pub fn partition(&self) {
        std::fs::write(self.log.with_extension("fault"), "partition").expect("write fault file");
    }

    pub fn heal(&self) {
        let _ = std::fs::remove_file(self.log.with_extension("fault"));
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The file a gateway's fake clock reads its offset from.
fn clock_file(log: &Path) -> PathBuf {
    log.with_extension("clock")
}

/// libfaketime's thread-safe library, where Debian's `faketime` package
/// puts it for this machine's architecture.
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib").ok().and_then(|dirs| {
        dirs.flatten()
            .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
            .find(|p| p.exists())
    });
    found.expect("libfaketime is missing: apt-get install faketime (scripts/setup.sh does)")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn spawn_with_env(
    args: &[&str],
    log: &Path,
    env: &[(String, String)],
    netns: Option<&str>,
) -> Child {
    let open = |path: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open log")
    };
    let err = open(log);
    let out = open(&stdout_of(log));
    gantry_in(netns)
        .args(args)
        .env("GANTRY_LOG", "info,openraft=warn")
        .env("GANTRY_FAULT_FILE", log.with_extension("fault"))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn gantry")
}

/// Gateways of one test, sharing one private containerd (a namespace each,
/// named after the gateway). Field order matters on drop: gateways are
/// killed first (in `Drop`), then containerd removes the containers, then
/// the temp dir goes.
pub struct TestCluster {
    pub gateways: Vec<Gateway>,
    pub containerd: gantry_node::testing::PrivateContainerd,
    /// Gateways with a containerd of their own (by gateway name), so a test
    /// can take one gateway's runtime down alone.
    pub own_containerd: Vec<(String, gantry_node::testing::PrivateContainerd)>,
    pub tokio: tokio::runtime::Runtime,
    pub tmp: tempfile::TempDir,
    /// Extra environment for gateways started by `init` and `join`.
    pub env: Vec<(String, String)>,
    /// A cloud hub started with `start_hub`.
    pub hub: Option<Hub>,
    /// The admin token every CLI call carries (made after `init`).
    pub token_file: PathBuf,
    /// When set, each gateway runs in a network namespace of its own
    /// (`with_network`), and the harness reaches it from inside.
    pub network: Option<netns::Topology>,
    /// libfaketime, preloaded into every gateway started from now on
    /// (`with_fake_clocks`).
    pub fake_clock: Option<PathBuf>,
}

/// A `gantry hub serve` process. Restarted on the address it first bound,
/// since attached sites know it by that address.
pub struct Hub {
    pub dir: PathBuf,
    pub log: PathBuf,
    pub addr: String,
    pub child: Option<Child>,
    /// Flags it was started with beyond data dir and address.
    pub extra: Vec<String>,
    /// The network namespace it runs in, if any (`start_hub_in`).
    pub netns: Option<String>,
}

impl Hub {
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the hub is still running");
        let _ = std::fs::remove_file(self.dir.join("hub-address"));
        let mut args = vec![
            "hub",
            "serve",
            "--data-dir",
            path_str(&self.dir),
            "--listen",
            &self.addr,
        ];
        args.extend(self.extra.iter().map(String::as_str));
        self.child = Some(spawn_with_env(&args, &self.log, &[], self.netns.as_deref()));
        let file = self.dir.join("hub-address");
        wait_for("the restarted hub to listen", DEADLINE, || {
            std::fs::read_to_string(&file).ok()
        });
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl TestCluster {
    pub fn new() -> Self {
        let tokio = tokio::runtime::Runtime::new().expect("tokio runtime");
        // Short paths: containerd's socket path must fit a sockaddr_un.
        let tmp = tempfile::Builder::new()
            .prefix("gt")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let containerd = tokio
            .block_on(gantry_node::testing::PrivateContainerd::start(
                tmp.path().join("ctd"),
            ))
            .expect("a private containerd for the gateways (install containerd and runc)");
        let token_file = tmp.path().join("admin.token");
        Self {
            gateways: Vec::new(),
            containerd,
            own_containerd: Vec::new(),
            tokio,
            tmp,
            env: Vec::new(),
            hub: None,
            token_file,
            network: None,
            fake_clock: None,
        }
    }

    /// A cluster whose gateways (up to `gateways`) each run in a network
    /// namespace of their own on one bridge (`netns::Topology`), listening
    /// on the port `netns::PORT` and advertising 127.77.0.N.
    pub fn with_network(gateways: usize) -> Self {
        let mut cluster = Self::new();
        cluster.network = Some(netns::Topology::create(gateways));
        cluster
    }

    /// Gateways started from now on run with a wall clock the test can
    /// step (`Gateway::set_clock_offset`), through libfaketime.
    pub fn with_fake_clocks(&mut self) {
        self.fake_clock = Some(libfaketime());
    }

    /// A client command for `server`: run inside the gateway's namespace
    /// when it has one.
    fn client(&self, server: &str) -> Command {
        if let Some(network) = &self.network {
            if let Some(i) = network.index_of(server) {
                let mut command = gantry_in(Some(&network.ns(i)));
                command
                    .arg("--server")
                    .arg(format!("127.0.0.1:{}", netns::PORT));
                return command;
            }
        }
        let mut command = gantry();
        command.arg("--server").arg(server);
        command
    }

    /// Starts `gantry hub serve` on a free loopback port; returns its address.
    pub fn start_hub(&mut self) -> String {
        self.start_hub_with(&[])
    }

    /// `start_hub` with more `hub serve` flags (kept for restarts).
    pub fn start_hub_with(&mut self, extra: &[&str]) -> String {
        self.start_hub_in(None, "127.0.0.1:0", extra)
    }

    /// Starts the hub inside network namespace `netns` (when given),
    /// listening on `listen`.
    pub fn start_hub_in(&mut self, netns: Option<&str>, listen: &str, extra: &[&str]) -> String {
        let dir = self.tmp.path().join("hub");
        let log = self.tmp.path().join("hub.log");
        let mut args = vec![
            "hub",
            "serve",
            "--data-dir",
            path_str(&dir),
            "--listen",
            listen,
        ];
        args.extend_from_slice(extra);
        let child = spawn_with_env(&args, &log, &[], netns);
        let file = dir.join("hub-address");
        let addr = wait_for("the hub to listen", DEADLINE, || {
            std::fs::read_to_string(&file).ok()
        });
        self.hub = Some(Hub {
            dir,
            log,
            addr: addr.clone(),
            child: Some(child),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            netns: netns.map(String::from),
        });
        addr
    }

    /// The hub's address (after `start_hub`).
    pub fn hub_addr(&self) -> String {
        self.hub.as_ref().expect("a hub was started").addr.clone()
    }

    /// Runs `gantry hub VERB ... --hub ADDR` with the hub's admin token
    /// (from its data dir).
    pub fn hub_cli(&self, args: &[&str]) -> Output {
        let addr = self.hub_addr();
        let hub = self.hub.as_ref().expect("a hub was started");
        let (dir, netns) = (hub.dir.clone(), hub.netns.clone());
        // `--hub` right after the verb: a trailing one would land in `delete`'s subcommand.
        let mut full = vec!["hub"];
        full.extend_from_slice(&args[..1]);
        full.extend_from_slice(&["--hub", &addr]);
        full.extend_from_slice(&args[1..]);
        gantry_in(netns.as_deref())
            .args(&full)
            .env("GANTRY_HUB_DATA_DIR", &dir)
            .stdin(Stdio::null())
            .output()
            .expect("run gantry hub")
    }

    /// A new site token for `site` from the hub (`hub site-token`).
    pub fn site_token(&self, site: &str) -> String {
        let out = self.hub_cli(&["site-token", "--site", site]);
        assert!(
            out.status.success(),
            "hub site-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A new viewer token, made through `server`.
    pub fn viewer_token(&self, server: &str) -> String {
        let out = self.cli(server, &["token", "create", "--role", "viewer"]);
        assert!(
            out.status.success(),
            "token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Builds a busybox OCI archive named `image` and imports it into every
    /// gateway through `server`; returns the archive.
    pub fn import_busybox(&self, server: &str, image: &str) -> PathBuf {
        let archive = self.tmp.path().join("busybox.tar");
        gantry_node::testing::busybox_oci_archive(&archive, image)
            .expect("busybox archive (install busybox-static)");
        let out = self.cli(server, &["image", "import", path_str(&archive), "--all"]);
        assert!(
            out.status.success(),
            "image import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        archive
    }

    /// Attaches the site of gateway `server` to the hub as `site` with a
    /// new site token, then applies `manifest` to it at the hub; returns
    /// the site token.
    pub fn attach_with(&self, server: &str, site: &str, manifest: &str) -> String {
        let token = self.site_token(site);
        let hub = self.hub_addr();
        let out = self.cli(
            server,
            &[
                "cloud", "attach", "--hub", &hub, "--site", site, "--token", &token,
            ],
        );
        assert!(
            out.status.success(),
            "cloud attach: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = self.hub_apply(site, manifest, &[]);
        assert!(
            out.status.success(),
            "hub apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        token
    }

    /// The hub's admin token, from its data dir.
    pub fn hub_admin_token(&self) -> String {
        let dir = &self.hub.as_ref().expect("a hub was started").dir;
        std::fs::read_to_string(dir.join("admin-token"))
            .expect("the hub admin token")
            .trim()
            .to_string()
    }

    /// `gantry hub status -o json`, the entry of `site` (Null if absent).
    pub fn hub_site(&self, site: &str) -> Value {
        let out = self.hub_cli(&["status", "-o", "json"]);
        if !out.status.success() {
            return Value::Null;
        }
        let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        status["sites"]
            .as_array()
            .and_then(|sites| sites.iter().find(|s| s["site"] == site).cloned())
            .unwrap_or(Value::Null)
    }

    /// Writes `text` to a manifest file and applies it to `site` at the hub.
    pub fn hub_apply(&self, site: &str, text: &str, extra: &[&str]) -> Output {
        let path = self
            .tmp
            .path()
            .join(format!("hub-manifest-{}.yaml", rand_suffix()));
        std::fs::write(&path, text).expect("write manifest");
        let mut args = vec!["apply", "--site", site, "-f", path_str(&path)];
        args.extend_from_slice(extra);
        self.hub_cli(&args)
    }

    /// The containerd namespace of gateway `name`: unique to this test
    /// cluster (tests run side by side, and the kernel's view is global).
    pub fn namespace_of(&self, name: &str) -> String {
        let tag = self
            .tmp
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("{name}-{tag}")
    }

    /// The containerd gateway `name` uses.
    pub fn containerd_of(&self, name: &str) -> &gantry_node::testing::PrivateContainerd {
        self.own_containerd
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
            .unwrap_or(&self.containerd)
    }

    /// `containerd_of`, to kill or restart it.
    pub fn containerd_of_mut(
        &mut self,
        name: &str,
    ) -> &mut gantry_node::testing::PrivateContainerd {
        match self.own_containerd.iter_mut().find(|(n, _)| n == name) {
            Some((_, containerd)) => containerd,
            None => &mut self.containerd,
        }
    }

    /// Flags that point a gateway at this test's containerd. Every other
    /// daemon flag keeps its default (the stop grace of 10 s included):
    /// tests see what users get.
    fn runtime_flags(&self, name: &str) -> Vec<String> {
        let socket = self
            .containerd_of(name)
            .socket()
            .to_string_lossy()
            .into_owned();
        let namespace = self.namespace_of(name);
        let flags = [
            "--containerd-socket",
            &socket,
            "--containerd-namespace",
            &namespace,
            // Nothing a test applies may ever be pulled from off this machine.
            "--allowed-registry",
            "127.0.0.1",
        ];
        flags.iter().map(|s| s.to_string()).collect()
    }

    /// `join` for a gateway that gets a private containerd of its own.
    pub fn join_with_own_containerd(&mut self, name: &str, extra: &[&str]) -> usize {
        let dir = self.tmp.path().join(format!("ctd-{name}"));
        let containerd = self
            .tokio
            .block_on(gantry_node::testing::PrivateContainerd::start(dir))
            .expect("a second private containerd");
        self.own_containerd.push((name.to_string(), containerd));
        self.join(name, extra)
    }

    /// Containers of `workload` that have a live process, per the kernel
    /// (`/proc/*/cgroup`), not per containerd or gantry: what really runs,
    /// also while a containerd is down. Returns (gateway, container id).
    pub fn kernel_copies(&self, workload: &str) -> Vec<(String, String)> {
        kernel_copies(&self.namespaces(), workload)
    }

    /// (gateway name, its containerd namespace) of every gateway.
    pub fn namespaces(&self) -> Vec<(String, String)> {
        self.gateways
            .iter()
            .map(|g| (g.name.clone(), self.namespace_of(&g.name)))
            .collect()
    }

    fn dirs(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.tmp.path().join(name),
            self.tmp.path().join(format!("{name}.log")),
        )
    }

    /// `gantry init` with `extra` flags; waits until it answers `status`.
    pub fn init(&mut self, name: &str, extra: &[&str]) -> usize {
        let (dir, log) = self.dirs(name);
        let data_dir = path_str(&dir).to_string();
        let args = vec![
            "init",
            "--data-dir",
            &data_dir,
            "--name",
            name,
            "--listen",
            "127.0.0.1:0",
        ];
        let index = self.launch(name, dir, log, &args, extra);
        self.wait_registered_with(index, &self.gateways[index].dir.clone());
        if !self.token_file.exists() {
            self.make_admin_token(index);
        }
        self.wait_registered(index);
        index
    }

    /// The harness's own admin token, made with the first gateway's local
    /// one (which goes when that gateway leaves; this one stays).
    fn make_admin_token(&self, index: usize) {
        let addr = self.gateways[index].addr();
        let out = self
            .client(&addr)
            .args(["token", "create", "--role", "admin", "--name", "tests"])
            .env("GANTRY_DATA_DIR", &self.gateways[index].dir)
            .stdin(Stdio::null())
            .output()
            .expect("run gantry token create");
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        std::fs::write(&self.token_file, format!("{token}\n")).expect("write the admin token");
    }

    /// Starts `gantry ARGS` (plus this test's runtime flags and `extra`)
    /// as gateway `name`; returns its index.
    fn launch(
        &mut self,
        name: &str,
        dir: PathBuf,
        log: PathBuf,
        args: &[&str],
        extra: &[&str],
    ) -> usize {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(self.runtime_flags(name));
        all.extend(extra.iter().map(|s| s.to_string()));
        let netns = self.network.as_ref().map(|network| {
            let index = self.gateways.len();
            if let Some(at) = all.iter().position(|a| a == "--listen") {
                all[at + 1] = format!("0.0.0.0:{}", netns::PORT);
            }
            all.extend(["--advertise".to_string(), network.addr(index)]);
            network.ns(index)
        });
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut kept_env = Vec::new();
        if let Some(lib) = &self.fake_clock {
            let file = clock_file(&log);
            std::fs::write(&file, "+0\n").expect("write the fake clock's offset");
            // Monotonic clocks stay true (an NTP step moves only the wall
            // clock); the offset is read again at most once a second.
            kept_env = vec![
                ("LD_PRELOAD".to_string(), path_str(lib).to_string()),
                ("FAKETIME_TIMESTAMP_FILE".into(), path_str(&file).into()),
                ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
                ("FAKETIME_CACHE_DURATION".into(), "1".into()),
            ];
        }
        let mut env = self.env.clone();
        env.extend(kept_env.iter().cloned());
        let child = spawn_with_env(&all, &log, &env, netns.as_deref());
        self.gateways.push(Gateway {
            name: name.into(),
            dir,
            log,
            child: Some(child),
            netns,
            kept_env,
        });
        self.gateways.len() - 1
    }

    pub fn token(&self) -> String {
        let path = self.gateways[0].dir.join("join-token");
        wait_for("the join token", DEADLINE, || {
            std::fs::read_to_string(&path).ok()
        })
        .trim()
        .to_string()
    }

    /// `gantry join` through gateway 0 (or `peer`), then waits until the
    /// new gateway is a member that the cluster lists.
    pub fn join(&mut self, name: &str, extra: &[&str]) -> usize {
        let peer = self.gateways[0].addr();
        self.join_via(name, &peer, extra)
    }

    pub fn join_via(&mut self, name: &str, peer: &str, extra: &[&str]) -> usize {
        let token = self.token();
        let (dir, log) = self.dirs(name);
        let data_dir = path_str(&dir).to_string();
        let args = vec![
            "join",
            "--data-dir",
            &data_dir,
            "--name",
            name,
            "--listen",
            "127.0.0.1:0",
            "--peer",
            peer,
            "--token",
            &token,
        ];
        let index = self.launch(name, dir, log, &args, extra);
        wait_for(&format!("{name} to become a member"), DEADLINE, || {
            let config = self.gateways[index].config()?;
            config["member"].as_bool().filter(|m| *m)
        });
        self.wait_registered(index);
        index
    }

    fn wait_registered(&mut self, index: usize) {
        let name = self.gateways[index].name.clone();
        let addr = self.gateways[index].addr();
        wait_for(&format!("{name} to list itself"), DEADLINE, || {
            let status = self.try_json(&addr, &["status"])?;
            let listed = status["nodes"]
                .as_array()?
                .iter()
                .any(|n| n["name"] == name.as_str());
            listed.then_some(())
        });
    }

    /// Waits until the gateway answers with its own admin token (before the
    /// harness has one).
    fn wait_registered_with(&self, index: usize, dir: &Path) {
        let name = self.gateways[index].name.clone();
        let addr = self.gateways[index].addr();
        let token = dir.join("admin-token");
        wait_for(&format!("{name} to answer"), DEADLINE, || {
            if !token.exists() {
                return None;
            }
            let out = self
                .client(&addr)
                .args(["status", "-o", "json"])
                .env("GANTRY_DATA_DIR", dir)
                .stdin(Stdio::null())
                .output()
                .ok()?;
            out.status.success().then_some(())
        });
    }

    pub fn addr(&self, index: usize) -> String {
        self.gateways[index].addr()
    }

    /// Runs a client verb against `server` with the harness's admin token.
    pub fn cli(&self, server: &str, args: &[&str]) -> Output {
        self.client(server)
            .args(args)
            .env("GANTRY_TOKEN_FILE", &self.token_file)
            .stdin(Stdio::null())
            .output()
            .expect("run gantry")
    }

    /// Runs a client verb with exactly the environment given (no harness
    /// token): for tests of credentials themselves.
    pub fn cli_as(&self, server: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
        self.client(server)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run gantry")
    }

    /// Runs a client verb with `-o json` and parses the answer.
    pub fn try_json(&self, server: &str, args: &[&str]) -> Option<Value> {
        let mut full = args.to_vec();
        full.extend_from_slice(&["-o", "json"]);
        let out = self.cli(server, &full);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn json(&self, server: &str, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.extend_from_slice(&["-o", "json"]);
        let out = self.cli(server, &full);
        assert!(
            out.status.success(),
            "gantry {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    /// Writes `text` to a manifest file and applies it through `server`.
    pub fn apply(&self, server: &str, text: &str) -> Output {
        let path = self
            .tmp
            .path()
            .join(format!("manifest-{}.yaml", rand_suffix()));
        std::fs::write(&path, text).expect("write manifest");
        self.cli(server, &["apply", "-f", path_str(&path)])
    }

    /// `apply`, which must succeed (the test stops with the CLI's error).
    pub fn apply_ok(&self, server: &str, text: &str) {
        let out = self.apply(server, text);
        assert!(
            out.status.success(),
            "apply through {server}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Status from any running gateway that knows a leader.
    pub fn status_with_leader(&mut self) -> Value {
        wait_for("a gateway that knows the leader", DEADLINE, || {
            for index in 0..self.gateways.len() {
                if !self.gateways[index].is_running() {
                    continue;
                }
                let addr = self.gateways[index].addr();
                if let Some(status) = self.try_json(&addr, &["status"]) {
                    if !status["leader"].is_null() {
                        return Some(status);
                    }
                }
            }
            None
        })
    }

    /// (container id, pid) of the workload's containers with a running task
    /// in `namespace` (each gateway's namespace is its name).
    pub fn running_containers(
        &self,
        namespace: &str,
        workload: &str,
    ) -> Vec<(String, Option<u32>)> {
        let mut config = gantry_node::ContainerdConfig::new(self.tmp.path().join("unused-logs"));
        config.socket = self.containerd_of(namespace).socket();
        config.namespace = self.namespace_of(namespace);
        // The channel is made lazily and needs a reactor.
        let _entered = self.tokio.enter();
        let Ok(runtime) = gantry_node::ContainerdRuntime::new(config) else {
            return Vec::new();
        };
        let list = self
            .tokio
            .block_on(gantry_node::Runtime::list(&runtime))
            .unwrap_or_default();
        list.into_iter()
            .filter(|c| c.workload == workload && c.task == gantry_node::TaskState::Running)
            .map(|c| (c.id, c.pid))
            .collect()
    }

    /// How many copies of `workload` run, over every gateway: containers
    /// with a live process, as the kernel sees them (`kernel_copies`).
    pub fn copies(&self, workload: &str) -> usize {
        self.kernel_copies(workload).len()
    }

    pub fn index_of(&self, name: &str) -> usize {
        self.gateways
            .iter()
            .position(|g| g.name == name)
            .expect("known gateway")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // GANTRY_TEST_LOGS=DIR keeps a failed test's whole gateway logs.
        if let (true, Some(dir)) = (
            std::thread::panicking(),
            std::env::var_os("GANTRY_TEST_LOGS"),
        ) {
            let dir = Path::new(&dir);
            let _ = std::fs::create_dir_all(dir);
            for gateway in &self.gateways {
                let name = self.tmp.path().file_name().unwrap_or_default();
                let to = dir.join(format!("{}-{}.log", name.to_string_lossy(), gateway.name));
                let _ = std::fs::copy(&gateway.log, to);
            }
        }
        if std::thread::panicking() {
            for gateway in &self.gateways {
                let log = gateway.log_text();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- last lines of {} ----", gateway.name);
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        if std::thread::panicking() {
            if let Some(hub) = &self.hub {
                let log = hub.log_text();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- last lines of the hub ----");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        for gateway in &mut self.gateways {
            gateway.kill();
        }
        if let Some(hub) = &mut self.hub {
            hub.kill();
        }
    }
}

/// Containers of `workload` with a live process in any of `namespaces`
/// ((gateway, containerd namespace) pairs), read from `/proc/*/cgroup`.
pub fn kernel_copies(namespaces: &[(String, String)], workload: &str) -> Vec<(String, String)> {
    let mut found = std::collections::BTreeSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in procs.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // Zombies have exited; only live processes count.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next());
        if matches!(state, Some("Z") | Some("X") | None) {
            continue;
        }
        let Ok(cgroup) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        for (gateway, namespace) in namespaces {
            let prefix = format!("/{namespace}/{workload}-");
            for line in cgroup.lines() {
                let Some(at) = line.find(&prefix) else {
                    continue;
                };
                let id = line[at + namespace.len() + 2..]
                    .split('/')
                    .next()
                    .unwrap_or_default();
                // `<workload>-<replica>-g<generation>` exactly.
                let rest = &id[workload.len() + 1..];
                let ok = rest.split_once("-g").is_some_and(|(r, g)| {
                    !r.is_empty()
                        && r.bytes().all(|b| b.is_ascii_digit())
                        && !g.is_empty()
                        && g.bytes().all(|b| b.is_ascii_digit())
                });
                if ok {
                    found.insert((gateway.clone(), id.to_string()));
                }
            }
        }
    }
    found.into_iter().collect()
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Nodes of a status document by name.
pub fn node<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["name"] == name))
        .unwrap_or(&Value::Null)
}

/// A tmpfs of `size` on `dir` (the test runs as root, as CI does).
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    pub fn mount(dir: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mount tmpfs (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
