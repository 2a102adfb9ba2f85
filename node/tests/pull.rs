//! Registry pulls against a loopback `docker-registry` and a real private
//! containerd, directly and through the agent's pull policies.

mod common;

use common::agent::{config, start_agent_with};
use common::{env, eventually, Env};
use gantry_node::testing::{busybox_oci_archive_marked, LoopbackRegistry};
use gantry_node::{
    AgentConfig, ContainerSpec, DesiredInstance, InstanceState, PullPolicy, RegistryConfig,
    RestartPolicy, Runtime, RuntimeError,
};

const REPO_TAG: &str = "gantry/busybox:test";

struct PullEnv {
    registry: LoopbackRegistry,
    env: Env,
    /// The reference of `REPO_TAG` on the registry.
    image: String,
    /// Manifest digest the registry serves for it.
    pushed: String,
}

/// A private containerd plus a loopback registry holding the busybox
/// image as `gantry/busybox:test` (marked "one").
async fn pull_env(ns: &str) -> PullEnv {
    let env = env(ns).await;
    let mut registry = LoopbackRegistry::start(env.dir.path().join("registry"))
        .await
        .unwrap();
    let image = registry.reference(REPO_TAG);
    let archive =
        busybox_oci_archive_marked(env.dir.path().join("one.tar"), &image, "one").unwrap();
    let pushed = registry
        .push_archive(&archive.path, REPO_TAG)
        .await
        .unwrap();
    PullEnv {
        registry,
        env,
        image,
        pushed,
    }
}

impl PullEnv {
    fn insecure(&self) -> RegistryConfig {
        RegistryConfig {
            insecure: vec![self.registry.addr().to_string()],
            allowed: vec!["127.0.0.1".into()],
            ..Default::default()
        }
    }

    fn agent_config(&self) -> AgentConfig {
        AgentConfig {
            registry: self.insecure(),
            ..config()
        }
    }

    fn spec(&self, id: &str, image: &str, script: &str) -> ContainerSpec {
        let mut spec = ContainerSpec::new(id, id.split('-').next().unwrap(), 0, 1, image);
        spec.command = vec!["sh".into(), "-c".into(), script.into()];
        spec
    }

    fn blob_gets(&self) -> usize {
        self.registry
            .requests_matching("GET /v2/gantry/busybox/blobs/")
    }

    async fn log_contains(&self, id: &str, text: &str) {
        let log = self.env.log_file(id);
        eventually(&format!("{text:?} in the log of {id}"), || async {
            let content = std::fs::read_to_string(&log).unwrap_or_default();
            content.contains(text).then_some(())
        })
        .await;
    }
}

fn want(spec: ContainerSpec, restart: RestartPolicy, pull: PullPolicy) -> DesiredInstance {
    DesiredInstance {
        pull,
        ..DesiredInstance::new(spec, restart)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_image_runs_and_a_second_pull_transfers_no_blob() {
    let p = pull_env("p-pull").await;
    let pulled = p.env.rt.pull(&p.image, &p.insecure()).await.unwrap();
    assert_eq!(pulled.name, p.image);
    assert_eq!(pulled.digest, p.pushed);
    assert!(p.env.image_exists(&p.image).await);
    let gets = p.blob_gets();
    assert!(gets >= 2, "config and layer fetched: {gets}");

    let spec = p.spec(
        "hello-0-g1",
        &p.image,
        "cat /etc/gantry-marker; echo; sleep 1000",
    );
    p.env.rt.start(&spec).await.unwrap();
    p.log_contains(&spec.id, "one").await;

    // Everything is present: only the manifest is asked for again.
    let again = p.env.rt.pull(&p.image, &p.insecure()).await.unwrap();
    assert_eq!(again.digest, p.pushed);
    assert_eq!(p.blob_gets(), gets);
    p.env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_not_listed_as_insecure_gets_no_plain_http() {
    let p = pull_env("p-secure").await;
    let pushing = p.registry.requests_matching("/v2/gantry");
    let err = p
        .env
        .rt
        .pull(&p.image, &RegistryConfig::default())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RuntimeError::Pull { .. }), "{msg}");
    assert!(msg.contains(&p.image), "{msg}");
    assert!(msg.contains("not listed as an insecure registry"), "{msg}");
    assert_eq!(p.registry.requests_matching("/v2/gantry"), pushing, "{msg}");
    assert!(!p.env.image_exists(&p.image).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_layer_is_refused_and_leaves_no_image() {
    let p = pull_env("p-corrupt").await;
    let layer = p.registry.layer_digests(&p.pushed).unwrap()[0].clone();
    let path = p.registry.blob_path(&layer);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let err = p.env.rt.pull(&p.image, &p.insecure()).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&layer) && msg.contains("digest mismatch"),
        "{msg}"
    );
    assert!(!p.env.image_exists(&p.image).await);
    // The layer's uncompressed digest names the snapshot it would have made.
    let manifest: serde_json::Value =
        serde_json::from_slice(&p.registry.read_blob(&p.pushed).unwrap()).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&p.registry.read_blob(config_digest).unwrap()).unwrap();
    let chain = config["rootfs"]["diff_ids"][0].as_str().unwrap();
    assert!(!p.env.snapshot_exists(chain).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_pulls_missing_image_and_reports_pulling() {
    let p = pull_env("p-agent").await;
    let spec = p.spec(
        "web-0-g1",
        &p.image,
        "cat /etc/gantry-marker; echo; sleep 1000",
    );
    let desired = vec![want(
        spec.clone(),
        RestartPolicy::Always,
        PullPolicy::IfNotPresent,
    )];
    let mut agent = start_agent_with(&p.env.rt, desired, p.agent_config(), None);
    agent
        .wait_instance(&spec.id, "pulling", |r| r.state == InstanceState::Pulling)
        .await;
    agent
        .wait_instance(&spec.id, "running", |r| r.state == InstanceState::Running)
        .await;
    p.log_contains(&spec.id, "one").await;
    assert_eq!(
        p.env.rt.image_digest(&p.image).await.unwrap(),
        Some(p.pushed.clone())
    );
    agent.stop().await;
    p.env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_tag_fails_naming_the_image() {
    let p = pull_env("p-notag").await;
    let image = p.registry.reference("gantry/busybox:nope");
    let spec = p.spec("gone-0-g1", &image, "true");
    let desired = vec![want(
        spec.clone(),
        RestartPolicy::Always,
        PullPolicy::IfNotPresent,
    )];
    let mut agent = start_agent_with(&p.env.rt, desired, p.agent_config(), None);
    let failed = agent
        .wait_instance(&spec.id, "failed", |r| r.state == InstanceState::Failed)
        .await;
    let reason = failed.reason.unwrap();
    assert!(reason.contains(&image), "{reason}");
    assert!(
        reason.to_lowercase().contains("manifest unknown"),
        "{reason}"
    );
    // Retried with back-off: a second attempt reaches the registry again.
    eventually("a retried pull", || async {
        (p.registry
            .requests_matching("GET /v2/gantry/busybox/manifests/nope")
            >= 2)
            .then_some(())
    })
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_policy_does_not_pull() {
    let p = pull_env("p-never").await;
    let pushing = p.registry.requests_matching("/v2/gantry");
    let spec = p.spec("offline-0-g1", &p.image, "true");
    let desired = vec![want(spec.clone(), RestartPolicy::Always, PullPolicy::Never)];
    let mut agent = start_agent_with(&p.env.rt, desired, p.agent_config(), None);
    let failed = agent
        .wait_instance(&spec.id, "failed", |r| r.state == InstanceState::Failed)
        .await;
    let reason = failed.reason.unwrap();
    assert!(reason.contains(&p.image), "{reason}");
    let seen = agent.stop().await;
    assert_eq!(p.registry.requests_matching("/v2/gantry"), pushing);
    assert!(!p.env.image_exists(&p.image).await);
    assert!(!seen.iter().any(|e| matches!(
        e,
        gantry_node::AgentEvent::Instance(r) if r.state == InstanceState::Pulling
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_policy_picks_up_a_repushed_tag_on_the_next_start() {
    let mut p = pull_env("p-always").await;
    let spec = p.spec(
        "edge-0-g1",
        &p.image,
        "cat /etc/gantry-marker; echo; sleep 1000",
    );
    let desired = vec![want(
        spec.clone(),
        RestartPolicy::Always,
        PullPolicy::Always,
    )];
    let mut agent = start_agent_with(&p.env.rt, desired, p.agent_config(), None);
    let first = agent
        .wait_instance(&spec.id, "running", |r| r.state == InstanceState::Running)
        .await;
    p.log_contains(&spec.id, "one").await;
    let gets = p.blob_gets();

    // Unchanged tag: the restart asks for the manifest only.
    let manifests = p
        .registry
        .requests_matching("GET /v2/gantry/busybox/manifests/test");
    p.env.kill_task(&spec.id).await;
    let second = agent
        .wait_instance(&spec.id, "restarted", |r| {
            r.state == InstanceState::Running && r.restarts == 1
        })
        .await;
    assert_ne!(second.pid, first.pid);
    assert!(
        p.registry
            .requests_matching("GET /v2/gantry/busybox/manifests/test")
            > manifests
    );
    assert_eq!(p.blob_gets(), gets);

    // Re-pushed tag: the next start runs the new content.
    let two =
        busybox_oci_archive_marked(p.env.dir.path().join("two.tar"), &p.image, "two").unwrap();
    let pushed = p.registry.push_archive(&two.path, REPO_TAG).await.unwrap();
    assert_ne!(pushed, p.pushed);
    p.env.kill_task(&spec.id).await;
    let third = agent
        .wait_instance(&spec.id, "running the new image", |r| {
            r.state == InstanceState::Running && r.restarts == 2
        })
        .await;
    assert_ne!(third.pid, second.pid);
    p.log_contains(&spec.id, "two").await;
    assert_eq!(p.env.rt.image_digest(&p.image).await.unwrap(), Some(pushed));
    let listed = p.env.rt.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].restarts, 2);
    agent.stop().await;
    p.env.cleanup().await;
}
