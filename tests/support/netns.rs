//! Gateways on a network of their own: one network namespace per gateway,
//! each with a veth into a bridge that lives in one more namespace, and
//! addresses from 127.77.0.0/24 (loopback range, so nothing this makes can
//! reach beyond the machine; `route_localnet` lets them leave `lo`).
//! Nothing is created in the root namespace, and iptables rules and qdiscs
//! die with their namespace. Faults are iptables rules inside a gateway's
//! namespace (this kernel has no netem): whole isolation, one-way loss of
//! everything heard, cuts between two groups, random loss, a slow link
//! (tbf). `lo` is never filtered, so the harness always reaches a
//! gateway's Admin API from inside its namespace.

use std::process::Command;

/// The port every gateway listens on inside its own namespace.
pub const PORT: u16 = 7400;

pub struct Topology {
    run: String,
    gateways: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Topology {
    /// Makes the bridge and `gateways` namespaces; panics saying what is
    /// missing (root, iproute2, veth/bridge support) rather than skipping.
    pub fn create(gateways: usize) -> Self {
        let topology = Topology {
            run: format!("gx{}", std::process::id()),
            gateways,
        };
        let bridge = topology.bridge();
        let made = (|| -> Result<(), String> {
            ip(&["netns", "add", &bridge])?;
            ip(&["-n", &bridge, "link", "set", "lo", "up"])?;
            ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
            for i in 0..gateways {
                let ns = topology.ns(i);
                ip(&["netns", "add", &ns])?;
                ip(&["-n", &ns, "link", "set", "lo", "up"])?;
                let veth = format!("v{i}");
                ip(&[
                    "-n", &bridge, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ])?;
                ip(&["-n", &bridge, "link", "set", &veth, "master", "br0", "up"])?;
                run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &ns,
                        "sysctl",
                        "-qw",
                        "net.ipv4.conf.all.route_localnet=1",
                        "net.ipv4.conf.eth0.route_localnet=1",
                    ],
                )?;
                let addr = format!("{}/24", topology.host(i));
                ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
                ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            }
            Ok(())
        })();
        if let Err(e) = made {
            panic!("cannot build the test network (needs root, iproute2, veth and bridge): {e}");
        }
        topology
    }

    fn bridge(&self) -> String {
        format!("{}-br", self.run)
    }

    /// The namespace of gateway `i`.
    pub fn ns(&self, i: usize) -> String {
        format!("{}-g{i}", self.run)
    }

    pub fn host(&self, i: usize) -> String {
        format!("127.77.0.{}", i + 1)
    }

    /// The address gateway `i` advertises to the others.
    pub fn addr(&self, i: usize) -> String {
        format!("{}:{PORT}", self.host(i))
    }

    /// Which gateway advertises `addr`.
    pub fn index_of(&self, addr: &str) -> Option<usize> {
        (0..self.gateways).find(|i| self.addr(*i) == addr)
    }

    fn iptables(&self, i: usize, rule: &[&str]) {
        let ns = self.ns(i);
        let mut args = vec!["netns", "exec", &ns, "iptables", "-w"];
        args.extend_from_slice(rule);
        if let Err(e) = run("ip", &args) {
            panic!("iptables in {ns}: {e}");
        }
    }

    /// Gateway `i` hears nothing and nobody hears it.
    pub fn isolate(&self, i: usize) {
        self.iptables(i, &["-A", "INPUT", "-i", "eth0", "-j", "DROP"]);
        self.iptables(i, &["-A", "OUTPUT", "-o", "eth0", "-j", "DROP"]);
    }

    /// Gateway `i` hears nothing but still sends.
    pub fn deafen(&self, i: usize) {
        self.iptables(i, &["-A", "INPUT", "-i", "eth0", "-j", "DROP"]);
    }

    /// Everything to or from `i` is refused at once (a reset for TCP), as
    /// a link whose far end is gone says so.
    pub fn refuse(&self, i: usize) {
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            self.iptables(
                i,
                &[
                    "-A",
                    chain,
                    dir,
                    "eth0",
                    "-p",
                    "tcp",
                    "-j",
                    "REJECT",
                    "--reject-with",
                    "tcp-reset",
                ],
            );
            self.iptables(i, &["-A", chain, dir, "eth0", "-j", "REJECT"]);
        }
    }

    /// No packet between `a` and `b`, either way.
    pub fn cut(&self, a: usize, b: usize) {
        for (from, to) in [(a, b), (b, a)] {
            let to = self.host(to);
            self.iptables(
                from,
                &["-A", "OUTPUT", "-o", "eth0", "-d", &to, "-j", "DROP"],
            );
        }
    }

    /// Gateway `i` loses `probability` of the packets it receives.
    pub fn lossy(&self, i: usize, probability: f64) {
        let p = format!("{probability}");
        self.iptables(
            i,
            &[
                "-A",
                "INPUT",
                "-i",
                "eth0",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ],
        );
    }

    /// Gateway `i` sends at most `rate` (like `256kbit`).
    pub fn slow(&self, i: usize, rate: &str) {
        let ns = self.ns(i);
        let args = [
            "-n", &ns, "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", rate, "burst",
            "32kbit", "latency", "400ms",
        ];
        if let Err(e) = run("tc", &args) {
            panic!("tc in {ns}: {e}");
        }
    }

    /// Every rule and qdisc of gateway `i` gone.
    pub fn heal(&self, i: usize) {
        self.iptables(i, &["-F"]);
        let ns = self.ns(i);
        let _ = run("tc", &["-n", &ns, "qdisc", "del", "dev", "eth0", "root"]);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for i in 0..self.gateways {
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["netns", "del", &self.bridge()]);
    }
}
