//! Peer export: an image exported from one namespace and imported into
//! another is the same image, and the agent's image source is asked before
//! the registry.

mod common;

use common::agent::{config, start_agent_with};
use common::{busybox_spec, env, eventually, IMAGE};
use gantry_node::testing::{busybox_oci_archive, LoopbackRegistry};
use gantry_node::{
    AgentConfig, ContainerdRuntime, DesiredInstance, ImageSource, InstanceState, PullPolicy,
    RegistryConfig, RestartPolicy, Runtime,
};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_image_imports_elsewhere_with_the_same_digest_and_runs() {
    let env = env("x-src").await;
    env.rt.import_archive(&env.archive.path).await.unwrap();
    assert!(env.rt.has_image(IMAGE).await.unwrap());
    let exported = env.dir.path().join("exported.tar");
    env.rt.export_archive(IMAGE, &exported).await.unwrap();

    let dst = ContainerdRuntime::connect(env.containerd.config("x-dst"))
        .await
        .unwrap();
    assert!(!dst.has_image(IMAGE).await.unwrap());
    let imported = dst.import_archive(&exported).await.unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].name, IMAGE);
    assert_eq!(imported[0].digest, env.archive.manifest_digest);
    assert_eq!(
        dst.image_digest(IMAGE).await.unwrap(),
        env.rt.image_digest(IMAGE).await.unwrap()
    );

    let spec = busybox_spec("copy-0-g1", "copy", 0, 1, "echo copied; sleep 1000");
    dst.start(&spec).await.unwrap();
    let log = dst.log_path(&spec.id);
    eventually("copied in the log", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("copied").then_some(())
    })
    .await;
    gantry_node::testing::remove_all(&dst).await.unwrap();

    // Exporting an absent image names it and leaves no file.
    let absent = env.dir.path().join("absent.tar");
    let err = env
        .rt
        .export_archive("127.0.0.1:5000/gantry/absent:1", &absent)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("gantry/absent:1"), "{err}");
    assert!(!absent.exists());
}

/// A "peer gateway": another namespace that exports on request.
struct PeerSource {
    peer: ContainerdRuntime,
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl ImageSource for PeerSource {
    async fn fetch(&self, image: &str, dest: &Path) -> Result<bool, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !self
            .peer
            .has_image(image)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(false);
        }
        self.peer
            .export_archive(image, dest)
            .await
            .map_err(|e| e.to_string())?;
        Ok(true)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_fetches_a_missing_image_from_the_peer_before_the_registry() {
    let env = env("s-dst").await;
    // The registry exists and is allowed, but must see no image request.
    let registry = LoopbackRegistry::start(env.dir.path().join("registry"))
        .await
        .unwrap();
    let image = registry.reference("gantry/busybox:test");
    let archive = busybox_oci_archive(env.dir.path().join("peer.tar"), &image).unwrap();
    let peer = ContainerdRuntime::connect(env.containerd.config("s-peer"))
        .await
        .unwrap();
    peer.import_archive(&archive.path).await.unwrap();
    let source = Arc::new(PeerSource {
        peer,
        calls: AtomicUsize::new(0),
    });

    let mut spec = busybox_spec("peer-0-g1", "peer", 0, 1, "echo from-peer; sleep 1000");
    spec.image = image.clone();
    let desired = vec![DesiredInstance::new(spec.clone(), RestartPolicy::Always)];
    assert_eq!(desired[0].pull, PullPolicy::IfNotPresent);
    let config = AgentConfig {
        registry: RegistryConfig {
            insecure: vec![registry.addr().to_string()],
            allowed: vec!["127.0.0.1".into()],
            ..Default::default()
        },
        scratch_dir: env.dir.path().to_path_buf(),
        ..config()
    };
    let mut agent = start_agent_with(
        &env.rt,
        desired,
        config,
        Some(source.clone() as Arc<dyn ImageSource>),
    );
    agent
        .wait_instance(&spec.id, "pulling", |r| r.state == InstanceState::Pulling)
        .await;
    agent
        .wait_instance(&spec.id, "running", |r| r.state == InstanceState::Running)
        .await;
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        env.rt.image_digest(&image).await.unwrap(),
        Some(archive.manifest_digest.clone())
    );
    assert_eq!(registry.requests_matching("/v2/gantry"), 0);
    // The fetched archive was removed after import.
    let leftovers = std::fs::read_dir(env.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("gantry-fetch-"))
        .count();
    assert_eq!(leftovers, 0);
    agent.stop().await;
    env.cleanup().await;
}
