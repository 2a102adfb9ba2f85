//! Flags and verbs as the user types them (clap derive). Values are checked
//! here only as far as their syntax; meaning is checked where it is used.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::CapacityOverride;
use crate::state::quantity::{parse_cpu, parse_memory, HumanDuration};

#[derive(Debug, Parser)]
#[command(
    name = "gantry",
    version,
    about = "A lightweight, Raft-backed edge orchestrator for small gateways"
)]
pub struct Cli {
    /// Gateway whose Admin API the client verbs talk to.
    #[arg(
        long,
        global = true,
        env = "GANTRY_SERVER",
        default_value = "127.0.0.1:7400"
    )]
    pub server: String,
    /// Output of the client verbs.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Log format of the daemon verbs.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    /// The table with more columns (`get nodes|workloads|instances`).
    Wide,
    Json,
    Yaml,
}

impl OutputFormat {
    /// For people (table or wide), not for programs.
    pub fn is_table(self) -> bool {
        matches!(self, OutputFormat::Table | OutputFormat::Wide)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Create a new cluster with this gateway as its first member (runs in the foreground).
    Init(InitArgs),
    /// Join an existing cluster through one of its gateways (runs in the foreground).
    Join(JoinArgs),
    /// Restart a gateway from its data dir (runs in the foreground).
    Run(RunArgs),
    /// The whole picture on one machine: a hub, a 3-gateway site, a demo image and sample workloads.
    Dev(super::dev::DevArgs),
    /// The cluster at a glance: leader, gateways, workloads.
    Status {
        #[command(flatten)]
        auth: ClientAuth,
    },
    /// List gateways, workloads or instances.
    Get {
        #[command(flatten)]
        auth: ClientAuth,
        /// Keep watching: the list, then a row (or a JSON line) for each
        /// object that appears or changes, until Ctrl-C.
        #[arg(short = 'w', long, global = true)]
        watch: bool,
        #[command(subcommand)]
        what: GetWhat,
    },
    /// Show one object in detail, with the scheduler's reasons and events.
    Describe {
        #[command(flatten)]
        auth: ClientAuth,
        #[command(subcommand)]
        what: DescribeWhat,
    },
    /// Create or update the workloads of a YAML manifest (one or many `---` documents),
    /// a Compose file or Kubernetes Deployments and Pods.
    Apply {
        #[command(flatten)]
        auth: ClientAuth,
        /// The manifest; `-` reads standard input.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Print the gantry workloads a Compose file or Kubernetes manifest becomes.
    ///
    /// The output is a gantry manifest (`---` between workloads) that
    /// `gantry apply -f` takes; no gateway is contacted.
    Convert {
        /// The Compose file or manifest; `-` reads standard input.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Delete a workload.
    Delete {
        #[command(flatten)]
        auth: ClientAuth,
        #[command(subcommand)]
        what: DeleteWhat,
    },
    /// Load images into the gateways' containerd.
    Image {
        #[command(flatten)]
        auth: ClientAuth,
        #[command(subcommand)]
        what: ImageVerb,
    },
    /// Print (or follow) a workload's container log, from whichever gateway runs it.
    Logs {
        #[command(flatten)]
        auth: ClientAuth,
        workload: String,
        /// Which replica (default: the lowest one that has a container).
        #[arg(long)]
        replica: Option<u32>,
        /// Keep printing new output.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Follow rolling upgrades.
    Rollout {
        #[command(flatten)]
        auth: ClientAuth,
        #[command(subcommand)]
        what: RolloutVerb,
    },
    /// Remove a gateway from the cluster. Its certificate and its own admin
    /// token stop working at once on every gateway. (A gateway that was
    /// compromised still knows the cluster's keys; see the README's
    /// security section.)
    Leave {
        #[command(flatten)]
        auth: ClientAuth,
        /// The gateway's name.
        name: String,
    },
    /// Show or change the cluster-wide settings.
    Settings {
        #[command(flatten)]
        auth: ClientAuth,
        #[command(subcommand)]
        what: SettingsWhat,
    },
    /// Keep new instances off a gateway (what runs there stays).
    Cordon {
        #[command(flatten)]
        auth: ClientAuth,
        name: String,
    },
    /// Let the scheduler use a gateway again (also cancels a drain).
    Uncordon {
        #[command(flatten)]
        auth: ClientAuth,
        name: String,
    },
    /// Cordon a gateway and move its instances away; waits until done.
    Drain {
        #[command(flatten)]
        auth: ClientAuth,
        name: String,
        /// Give up (and exit non-zero, saying what is stuck) after this long.
        #[arg(long, default_value = "2m")]
        timeout: HumanDuration,
    },
    /// The cluster's recent events, oldest first.
    Events {
        #[command(flatten)]
        auth: ClientAuth,
    },
    /// Attach this site to a cloud hub, or detach it.
    Cloud {
        #[command(subcommand)]
        what: CloudVerb,
    },
    /// Bearer tokens for people and scripts: `viewer` reads, `admin` does everything.
    Token {
        #[command(flatten)]
        auth: ClientAuth,
        #[command(subcommand)]
        what: TokenVerb,
    },
    /// Tokens that let new gateways join.
    JoinToken {
        #[command(flatten)]
        auth: ClientAuth,
        #[command(subcommand)]
        what: JoinTokenVerb,
    },
    /// This gateway's certificate.
    Pki {
        #[command(flatten)]
        auth: ClientAuth,
        #[command(subcommand)]
        what: PkiVerb,
    },
    /// The cloud hub: `serve` runs it; the other verbs administer it.
    Hub {
        #[command(subcommand)]
        verb: HubVerb,
    },
    /// Check this machine for a gateway: containerd, cgroups, clock, disk,
    /// port and certificates, one verdict line each (exit 1 if one failed).
    Check {
        #[command(flatten)]
        files: AuthFiles,
        /// containerd socket to try [default: the data dir's, else /run/containerd/containerd.sock].
        #[arg(long)]
        containerd_socket: Option<String>,
    },
    /// Print a shell completion script: `source <(gantry completion bash)`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (gantry.1 and one per verb, like gantry-apply.1) into DIR.
    Man { dir: PathBuf },
    /// Started by a gateway daemon: enforces singleton fence deadlines if
    /// the daemon dies (see agent::guard).
    #[command(hide = true)]
    FenceGuard {
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// How a client verb proves who it is, and how it recognises the gateway:
/// first found wins, `--token`, `GANTRY_TOKEN`, `--token-file`, then the
/// `admin-token` of a gateway data dir on this machine. The gateway is
/// checked against the CA pinned inside the token, or `--ca-file`.
#[derive(Debug, Clone, Args, Default)]
pub struct ClientAuth {
    /// An admin or viewer token (`gantry token create`).
    #[arg(long, env = "GANTRY_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub files: AuthFiles,
}

/// The file-based credentials (every client verb; `cloud attach`, whose
/// `--token` is the site token, takes the admin token from these or
/// `GANTRY_TOKEN`).
#[derive(Debug, Clone, Args, Default)]
pub struct AuthFiles {
    /// A file holding the token.
    #[arg(long, env = "GANTRY_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// The cluster's CA bundle (DATA_DIR/pki/ca.crt), instead of the pin in the token.
    #[arg(long, env = "GANTRY_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// A gateway's data dir on this machine, for its admin-token [default: /var/lib/gantry when readable].
    #[arg(long, env = "GANTRY_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

/// `gantry cloud attach`: to a hub (`--hub`, `--token`) or through an MQTT
/// broker (`--mqtt` and its options).
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The hub's address.
    #[arg(long, required_unless_present = "mqtt")]
    pub hub: Option<String>,
    /// Through an MQTT broker instead of a hub: mqtts://HOST[:PORT]
    /// (mqtt:// only with --insecure). The broker's CA bundle is
    /// --ca-file (the system's bundle when not given); the gateway is
    /// then trusted through the admin token's pin or --data-dir.
    #[arg(long, value_name = "URL", conflicts_with = "hub")]
    pub mqtt: Option<String>,
    /// This site's name at the hub (or in the broker's topics).
    #[arg(long)]
    pub site: String,
    /// The site token (`gantry hub site-token`); it pins the hub's CA.
    #[arg(
        long,
        env = "GANTRY_SITE_TOKEN",
        hide_env_values = true,
        required_unless_present = "mqtt"
    )]
    pub token: Option<String>,
    /// The broker user (--mqtt).
    #[arg(long, requires = "mqtt")]
    pub username: Option<String>,
    /// The broker password (--mqtt); sealed with the cluster key.
    #[arg(
        long,
        env = "GANTRY_MQTT_PASSWORD",
        hide_env_values = true,
        requires = "username"
    )]
    pub password: Option<String>,
    /// A client certificate chain (PEM) for brokers that authenticate
    /// clients by certificate (--mqtt).
    #[arg(long, requires = "mqtt", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The key of --client-cert (PEM); sealed with the cluster key.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Allow a plain mqtt:// broker (no TLS).
    #[arg(long, requires = "mqtt")]
    pub insecure: bool,
    /// Topics go under it [default: gantry/sites/SITE/] (--mqtt).
    #[arg(long, requires = "mqtt")]
    pub topic_prefix: Option<String>,
    /// Ping the hub after this long without hearing from it, so a path
    /// that silently drops packets is noticed (within this plus 20 s)
    /// and reconnected; each ping costs about 230 bytes on the wire.
    /// A duration (60s, 20m) or off.
    #[arg(long, default_value = "60s")]
    pub keepalive: String,
    #[command(flatten)]
    pub files: AuthFiles,
}

/// `hub serve --mqtt ...`: the broker the hub also serves sites through.
#[derive(Debug, Args)]
pub struct HubMqttArgs {
    /// Also serve sites through an MQTT broker: publish each site's
    /// desired state (retained) and read their reports. mqtts://HOST[:PORT]
    /// (mqtt:// only with --mqtt-insecure).
    #[arg(long = "mqtt", value_name = "URL")]
    pub url: Option<String>,
    /// The hub's broker user.
    #[arg(long = "mqtt-username", requires = "url")]
    pub username: Option<String>,
    /// The hub's broker password.
    #[arg(
        long = "mqtt-password",
        env = "GANTRY_HUB_MQTT_PASSWORD",
        hide_env_values = true,
        requires = "username"
    )]
    pub password: Option<String>,
    /// The broker's CA bundle (PEM) [default: the system's].
    #[arg(long = "mqtt-ca-file", requires = "url")]
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain (PEM) for the broker.
    #[arg(long = "mqtt-client-cert", requires = "url", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The key of --mqtt-client-cert (PEM).
    #[arg(long = "mqtt-client-key", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Allow a plain mqtt:// broker (no TLS).
    #[arg(long = "mqtt-insecure", requires = "url")]
    pub insecure: bool,
    /// Sites' topics are PREFIX + SITE + /desired, /reported, ...
    #[arg(long = "mqtt-prefix", default_value = "gantry/sites/")]
    pub prefix: String,
}

#[derive(Debug, Subcommand)]
pub enum CloudVerb {
    /// Store the link in the replicated state: every future leader keeps it open.
    Attach(Box<AttachArgs>),
    /// Close the link; cloud workloads keep running.
    Detach {
        #[command(flatten)]
        auth: ClientAuth,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenVerb {
    /// Make a token and print it (once: only its hash is kept).
    Create {
        /// viewer (every read verb, logs, events) or admin (everything).
        #[arg(long)]
        role: String,
        /// A name to recognise it by in `token list`.
        #[arg(long, default_value = "")]
        name: String,
        /// It stops working after this long (default: never).
        #[arg(long)]
        ttl: Option<HumanDuration>,
    },
    /// Ids, names, roles and expiry (never a secret).
    List,
    /// Stops a token at once, on every gateway.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum JoinTokenVerb {
    /// Make a bootstrap join token and print it (once).
    Create {
        /// It stops working after this long.
        #[arg(long, default_value = "24h")]
        ttl: HumanDuration,
        /// How many gateways may join with it (default: any number).
        #[arg(long)]
        uses: Option<u32>,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Ids, expiry and uses left (never a secret).
    List,
    /// Replace the default join token (the one `init` printed); the old one stops working.
    Rotate,
}

#[derive(Debug, Subcommand)]
pub enum PkiVerb {
    /// This gateway's certificate and the cluster CA.
    Status,
    /// Renew this gateway's certificate now (it renews by itself at 70-90 % of its life).
    Renew,
}

/// The hub admin verbs' target and credential.
#[derive(Debug, Args)]
pub struct HubAddr {
    /// The hub's address.
    #[arg(long, env = "GANTRY_HUB", default_value = "127.0.0.1:7500")]
    pub hub: String,
    /// A hub admin token (HUB_DATA/admin-token).
    #[arg(long, env = "GANTRY_HUB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The hub's data dir on this machine, for its admin-token.
    #[arg(long, env = "GANTRY_HUB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum HubVerb {
    /// Run the hub in the foreground.
    Serve {
        /// Where the hub keeps its database, CA and admin token.
        #[arg(long)]
        data_dir: PathBuf,
        /// Address to serve on (port 0 picks a free port, written to DATA_DIR/hub-address).
        #[arg(long, default_value = "127.0.0.1:7500")]
        listen: String,
        /// Extra names or IP addresses for the hub's server certificate (it always names hub.gantry).
        #[arg(long, value_delimiter = ',')]
        tls_san: Vec<String>,
        /// Your own server certificate chain (PEM: the certificate, then its CA) instead of the hub's CA.
        #[arg(long)]
        tls_cert: Option<PathBuf>,
        /// The key of --tls-cert (PEM).
        #[arg(long)]
        tls_key: Option<PathBuf>,
        /// Drop a site link that has been silent this long and then misses
        /// three kernel TCP keepalive probes 10 s apart (a live site pings
        /// every minute by default, which keeps these probes off the wire).
        /// A duration or off.
        #[arg(long, default_value = "2m")]
        keepalive: String,
        #[command(flatten)]
        mqtt: HubMqttArgs,
    },
    /// Create or update a site's workloads from a YAML manifest (creates the site).
    Apply {
        #[command(flatten)]
        hub: HubAddr,
        #[arg(long, required_unless_present = "all_sites")]
        site: Option<String>,
        /// Apply to every site the hub knows instead of one, each as a
        /// revision of its own; refused as a whole if any site refuses.
        #[arg(long, conflicts_with = "site")]
        all_sites: bool,
        /// The manifest; `-` reads standard input.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Test hook: store the documents unvalidated.
        #[arg(long, hide = true)]
        unchecked: bool,
    },
    /// Delete a site's workload.
    Delete {
        #[command(flatten)]
        hub: HubAddr,
        #[arg(long)]
        site: String,
        #[command(subcommand)]
        what: DeleteWhat,
    },
    /// Every site: connection, revisions, and the status it last reported.
    Status {
        #[command(flatten)]
        hub: HubAddr,
    },
    /// Give a site a new token and print it (the hub keeps only its hash).
    SiteToken {
        #[command(flatten)]
        hub: HubAddr,
        #[arg(long)]
        site: String,
        /// Keep the previous token valid this long too (default: it stops at once).
        #[arg(long)]
        grace: Option<HumanDuration>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SettingsWhat {
    /// Print the settings.
    Get,
    /// Change some settings, like `node-grace=2s,heartbeat-interval=500ms,voter-replace-after=1m`.
    Set { assignments: String },
}

impl Verb {
    pub fn is_daemon(&self) -> bool {
        matches!(
            self,
            Verb::Init(_)
                | Verb::Join(_)
                | Verb::Run(_)
                | Verb::Dev(_)
                | Verb::FenceGuard { .. }
                | Verb::Hub {
                    verb: HubVerb::Serve { .. }
                }
        )
    }
}

#[derive(Debug, Subcommand)]
pub enum GetWhat {
    Nodes,
    Workloads,
    Instances,
}

#[derive(Debug, Subcommand)]
pub enum RolloutVerb {
    /// Waits until the workload's rollout finishes, like `kubectl rollout
    /// status`: exit 0 once every replica of the generation runs, non-zero
    /// if it was rolled back or `--timeout` passed; then prints generations,
    /// progress and the last rollback. `--watch=false` prints at once.
    Status {
        name: String,
        #[arg(long, default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
        watch: bool,
        /// With --watch: give up (exit non-zero) after this long.
        #[arg(long, default_value = "10m")]
        timeout: HumanDuration,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageVerb {
    /// Load an OCI image-layout archive (as `skopeo copy ... oci-archive:` writes).
    Import {
        file: PathBuf,
        /// Load it into every gateway of the cluster, over the cluster's own connections.
        #[arg(long)]
        all: bool,
    },
    /// Pull an image from its registry onto the gateway, showing its bytes
    /// as they arrive (the gateway's allowed and insecure registries apply).
    Pull {
        image: String,
        /// Onto every gateway: this one pulls from the registry, the others
        /// fetch it from this one (the uplink carries it once).
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DescribeWhat {
    Workload { name: String },
    Node { name: String },
}

#[derive(Debug, Subcommand)]
pub enum DeleteWhat {
    Workload { name: String },
}

/// Flags shared by `init` and `join`.
#[derive(Debug, Args)]
pub struct MemberArgs {
    /// A TOML file of these flags (keys are the long flags; a flag given
    /// here wins) [default: /etc/gantry/config.toml when it exists].
    #[arg(long, env = "GANTRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where this gateway keeps its state; must not hold a gateway yet.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Unique name of this gateway in the cluster (a DNS label).
    #[arg(long)]
    pub name: String,
    /// Address to serve the Cluster and Admin APIs on (port 0 picks a free port).
    #[arg(long)]
    pub listen: String,
    /// Address others reach this gateway at (default: the bound listen address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Labels for placement, like `zigbee=true,room=cellar`.
    #[arg(long, value_parser = parse_labels, default_value = "")]
    pub labels: BTreeMap<String, String>,
    /// Override discovered resources, like `cpu=2000m,memory=1Gi` (either part alone is fine).
    #[arg(long, value_parser = parse_capacity)]
    pub capacity: Option<CapacityOverride>,
    /// Host devices workloads may require, like `/dev/ttyUSB0,/dev/ttyACM0`.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// containerd socket the node agent uses.
    #[arg(long, default_value = crate::config::DEFAULT_CONTAINERD_SOCKET)]
    pub containerd_socket: String,
    /// containerd namespace of this gateway's containers.
    #[arg(long, default_value = crate::config::DEFAULT_CONTAINERD_NAMESPACE)]
    pub containerd_namespace: String,
    /// Between SIGTERM and SIGKILL when this gateway stops a container.
    #[arg(long, default_value = "10s")]
    pub stop_grace: HumanDuration,
    /// Free space kept in the data dir, like `64Mi`: below it the gateway
    /// refuses writes (and leadership) until space is freed; `0` turns this off.
    #[arg(long, default_value = "64Mi", value_parser = parse_bytes)]
    pub disk_reserve: u64,
    /// Registries (HOST:PORT) this gateway may pull from over plain HTTP.
    #[arg(long = "insecure-registry", value_delimiter = ',')]
    pub insecure_registries: Vec<String>,
    /// When given, the only registries (HOST or HOST:PORT) this gateway may pull from.
    #[arg(long = "allowed-registry", value_delimiter = ',')]
    pub allowed_registries: Vec<String>,
}

impl MemberArgs {
    /// A gateway on a free loopback port with every other flag at its
    /// default: what benches and embedded gateways start from.
    pub fn loopback(data_dir: PathBuf, name: &str) -> Self {
        Self {
            config: None,
            data_dir,
            name: name.to_string(),
            listen: "127.0.0.1:0".into(),
            advertise: None,
            labels: BTreeMap::new(),
            capacity: None,
            devices: Vec::new(),
            containerd_socket: crate::config::DEFAULT_CONTAINERD_SOCKET.into(),
            containerd_namespace: crate::config::DEFAULT_CONTAINERD_NAMESPACE.into(),
            stop_grace: HumanDuration(std::time::Duration::from_secs(10)),
            disk_reserve: crate::cluster::disk_space::DEFAULT_RESERVE_BYTES,
            insecure_registries: Vec::new(),
            // Embedded gateways (benches, `gantry dev`) stay on this machine.
            allowed_registries: vec!["127.0.0.1".into()],
        }
    }
}

impl InitArgs {
    /// `gantry init` with the default cluster-wide timers.
    pub fn with_defaults(member: MemberArgs) -> Self {
        let settings = crate::state::ClusterSettings::default();
        Self {
            member,
            ca_cert: None,
            ca_key: None,
            heartbeat_interval: settings.heartbeat_interval,
            node_grace: settings.node_grace,
            voter_replace_after: settings.voter_replace_after,
        }
    }
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub member: MemberArgs,
    /// Your own cluster CA certificate (PEM) instead of a new one; with --ca-key.
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The key of --ca-cert (PEM). It is kept sealed in the cluster's state.
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// How often gateways heartbeat the leader (cluster-wide).
    #[arg(long, default_value = "300ms")]
    pub heartbeat_interval: HumanDuration,
    /// Silence after which a gateway is NotReady (cluster-wide).
    #[arg(long, default_value = "1s")]
    pub node_grace: HumanDuration,
    /// A voter NotReady this long is replaced by a Ready learner (cluster-wide).
    #[arg(long, default_value = "30s")]
    pub voter_replace_after: HumanDuration,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    #[command(flatten)]
    pub member: MemberArgs,
    /// Any gateway of the cluster.
    #[arg(long)]
    pub peer: String,
    /// The join token (printed by `gantry init`, or `gantry join-token create`);
    /// it pins the cluster's CA, checked before the token is sent.
    #[arg(long, env = "GANTRY_JOIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// How long to keep trying an unreachable peer before giving up.
    #[arg(long, default_value = "30s")]
    pub join_timeout: HumanDuration,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[arg(long)]
    pub data_dir: PathBuf,
    /// A TOML file of these flags (keys are the long flags; a flag given
    /// here wins) [default: /etc/gantry/config.toml when it exists].
    #[arg(long, env = "GANTRY_CONFIG")]
    pub config: Option<PathBuf>,
}

fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("label '{pair}' is not key=value"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("label '{pair}' has an empty key"));
        }
        if labels
            .insert(key.to_string(), value.trim().to_string())
            .is_some()
        {
            return Err(format!("label '{key}' is given twice"));
        }
    }
    Ok(labels)
}

/// A size in bytes with the memory units (`64Mi`, `1G`, `0`).
fn parse_bytes(text: &str) -> Result<u64, String> {
    parse_memory(text).map_err(|e| e.to_string())
}

fn parse_capacity(text: &str) -> Result<CapacityOverride, String> {
    let mut capacity = CapacityOverride::default();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("cpu", value)) => {
                capacity.cpu_millis = Some(parse_cpu(value).map_err(|e| e.to_string())?)
            }
            Some(("memory", value)) => {
                capacity.memory_bytes = Some(parse_memory(value).map_err(|e| e.to_string())?)
            }
            _ => return Err(format!("'{pair}' is not cpu=QUANTITY or memory=QUANTITY")),
        }
    }
    if capacity.cpu_millis == Some(0) || capacity.memory_bytes == Some(0) {
        return Err("capacity must be more than zero".into());
    }
    Ok(capacity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_capacity() {
        let labels = parse_labels("zigbee=true, room=cellar").unwrap();
        assert_eq!(labels.get("room").map(String::as_str), Some("cellar"));
        assert!(parse_labels("novalue").is_err());
        assert!(parse_labels("a=1,a=2").is_err());
        let cap = parse_capacity("cpu=2000m,memory=1Gi").unwrap();
        assert_eq!(
            (cap.cpu_millis, cap.memory_bytes),
            (Some(2000), Some(1 << 30))
        );
        assert_eq!(parse_capacity("memory=512Mi").unwrap().cpu_millis, None);
        assert!(parse_capacity("cpu=lots").is_err());
        assert!(parse_capacity("disk=1G").is_err());
        assert!(parse_capacity("cpu=0").is_err());
    }

    #[test]
    fn server_flag_before_or_after_the_verb() {
        let before =
            Cli::try_parse_from(["gantry", "--server", "127.0.0.1:9", "get", "nodes"]).unwrap();
        let after = Cli::try_parse_from([
            "gantry",
            "get",
            "nodes",
            "--server",
            "127.0.0.1:9",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(before.server, "127.0.0.1:9");
        assert_eq!(after.server, "127.0.0.1:9");
        assert_eq!(after.output, OutputFormat::Json);
    }
}
