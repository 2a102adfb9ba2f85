//! A private Mosquitto broker for the MQTT link's tests, started like the
//! private containerd: its own config, TLS certificates (made with the
//! `openssl` command), password file and persistence directory under the
//! test's temp dir, on a free loopback port. It needs Debian's `mosquitto`
//! and `mosquitto-clients`; without them the test fails loudly.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "site-user";
pub const PASSWORD: &str = "s3cret-for-tests";

pub struct Broker {
    pub dir: PathBuf,
    pub port: u16,
    pub ca: PathBuf,
    child: Option<Child>,
}

fn run(program: &str, args: &[&str], dir: &Path) -> Output {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (install openssl, mosquitto and mosquitto-clients): {e}")
        });
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

impl Broker {
    /// Makes the certificates and config in `dir` and starts the broker.
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir.join("data")).expect("broker dir");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend_from_slice(&ec);
        ca.extend_from_slice(&[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "3",
            "-subj",
            "/CN=gantry-test-broker-ca",
        ]);
        run("openssl", &ca, dir);
        let mut csr = vec!["req"];
        csr.extend_from_slice(&ec);
        csr.extend_from_slice(&[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        run("openssl", &csr, dir);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .expect("ext file");
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "3",
                "-extfile",
                "server.ext",
            ],
            dir,
        );
        run(
            "mosquitto_passwd",
            &["-b", "-c", "passwd", USER, PASSWORD],
            dir,
        );
        let port = free_port();
        let config = format!(
            "listener {port} 127.0.0.1\n\
             cafile {dir}/ca.crt\n\
             certfile {dir}/server.crt\n\
             keyfile {dir}/server.key\n\
             allow_anonymous false\n\
             password_file {dir}/passwd\n\
             persistence true\n\
             persistence_location {dir}/data/\n\
             autosave_interval 1\n\
             user root\n\
             log_dest file {dir}/mosquitto.log\n\
             log_type all\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("mosquitto.conf"), config).expect("config");
        let mut broker = Broker {
            dir: dir.to_path_buf(),
            port,
            ca: dir.join("ca.crt"),
            child: None,
        };
        broker.restart();
        broker
    }

    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    /// kill -9, as a power cut would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port and persistence.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("mosquitto")
            .args(["-c", &self.dir.join("mosquitto.conf").display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start mosquitto (install the mosquitto package)");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "mosquitto did not listen on {}: see {}/mosquitto.log",
                self.port,
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn client_args(&self) -> Vec<String> {
        [
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "--cafile",
            &self.ca.display().to_string(),
            "-u",
            USER,
            "-P",
            PASSWORD,
            "-q",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `mosquitto_pub`, as a cloud with nothing but a broker would.
    pub fn publish(&self, topic: &str, payload: &str, retain: bool) {
        let mut args = self.client_args();
        args.extend(["-t".into(), topic.into(), "-m".into(), payload.into()]);
        if retain {
            args.push("-r".into());
        }
        let out = Command::new("mosquitto_pub")
            .args(&args)
            .output()
            .expect("cannot run mosquitto_pub (install mosquitto-clients)");
        assert!(
            out.status.success(),
            "mosquitto_pub: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `mosquitto_sub -v` on `topic` in the background; its lines
    /// (`TOPIC PAYLOAD`) go to the returned file.
    pub fn subscribe(&self, topic: &str, name: &str) -> Subscription {
        let file = self.dir.join(format!("sub-{name}.txt"));
        let out = std::fs::File::create(&file).expect("sub file");
        let mut args = self.client_args();
        args.extend(["-v".into(), "-t".into(), topic.into()]);
        let child = Command::new("mosquitto_sub")
            .args(&args)
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run mosquitto_sub (install mosquitto-clients)");
        Subscription { child, file }
    }

    /// The retained message of `topic` (waits up to 5 s for one).
    pub fn retained(&self, topic: &str) -> Option<String> {
        let mut args = self.client_args();
        args.extend([
            "-t".into(),
            topic.into(),
            "-C".into(),
            "1".into(),
            "-W".into(),
            "5".into(),
            "--retained-only".into(),
        ]);
        let out = Command::new("mosquitto_sub")
            .args(&args)
            .output()
            .expect("cannot run mosquitto_sub (install mosquitto-clients)");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!text.is_empty()).then_some(text)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Subscription {
    child: Child,
    file: PathBuf,
}

impl Subscription {
    /// The payloads received on `topic` so far.
    pub fn payloads(&self, topic: &str) -> Vec<String> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        text.lines()
            .filter_map(|line| line.strip_prefix(&format!("{topic} ")))
            .map(String::from)
            .collect()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
