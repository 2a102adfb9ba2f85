//! The containerd adapter against a real private containerd.

mod common;

use common::{busybox_spec, env, eventually, IMAGE};
use gantry_node::{Runtime, RuntimeError, TaskState};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_creates_image_and_snapshot() {
    let env = env("t-import").await;
    let images = env.rt.import_archive(&env.archive.path).await.unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].name, IMAGE);
    assert_eq!(images[0].digest, env.archive.manifest_digest);
    assert!(env.image_exists(IMAGE).await);
    assert!(env.snapshot_exists(&env.archive.chain_id).await);
    // Importing again is harmless.
    env.rt.import_archive(&env.archive.path).await.unwrap();
    env.rt.ensure_image(IMAGE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_archive_is_refused_and_leaves_nothing() {
    let env = env("t-trunc").await;
    let bytes = std::fs::read(&env.archive.path).unwrap();
    let truncated = env.dir.path().join("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = env.rt.import_archive(&truncated).await.unwrap_err();
    assert!(matches!(err, RuntimeError::InvalidImage(_)), "{err}");
    assert!(!env.image_exists(IMAGE).await);
    assert!(!env.snapshot_exists(&env.archive.chain_id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_is_refused_with_reason_and_leaves_nothing() {
    let env = env("t-corrupt").await;
    let mut bytes = std::fs::read(&env.archive.path).unwrap();
    // Flip a byte inside busybox's ELF body (the layer comes first, after
    // the small oci-layout entry), keeping the tar structure intact.
    let at = 64 * 1024;
    bytes[at] ^= 0xff;
    let corrupted = env.dir.path().join("corrupted.tar");
    std::fs::write(&corrupted, &bytes).unwrap();
    let err = env.rt.import_archive(&corrupted).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("corrupted") && msg.contains(&env.archive.layer_digest),
        "{msg}"
    );
    assert!(!env.image_exists(IMAGE).await);
    assert!(!env.snapshot_exists(&env.archive.chain_id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_runs_logs_and_is_removed_completely() {
    let env = env("t-run").await;
    env.rt.import_archive(&env.archive.path).await.unwrap();
    let spec = busybox_spec("hello-0-g1", "hello", 0, 1, "echo hello; sleep 1000");
    let started = env.rt.start(&spec).await.unwrap();
    assert!(started.pid > 0);
    let log = env.log_file(&spec.id);
    eventually("hello in the log", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("hello").then_some(())
    })
    .await;
    let logged = gantry_node::logs::read_log(&env.rt.config().log_dir, &spec.id)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&logged).contains("hello"));
    let listed = env.rt.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    let c = &listed[0];
    assert_eq!(
        (c.workload.as_str(), c.replica, c.generation),
        ("hello", 0, 1)
    );
    assert_eq!(c.task, TaskState::Running);
    assert_eq!(c.pid, Some(started.pid));
    let code = env
        .rt
        .remove(&spec.id, Duration::from_millis(500))
        .await
        .unwrap();
    // sh as pid 1 ignores SIGTERM, so the grace period ends in SIGKILL.
    assert_eq!(code, Some(128 + 9));
    assert!(!env.task_exists(&spec.id).await);
    assert!(!env.container_exists(&spec.id).await);
    assert!(!env.snapshot_exists(&spec.id).await);
    assert!(env.rt.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_is_reported_by_event_and_list() {
    let env = env("t-exit").await;
    env.rt.import_archive(&env.archive.path).await.unwrap();
    let mut exits = env.rt.exits().await.unwrap();
    let spec = busybox_spec("exit3-0-g1", "exit3", 0, 1, "exit 3");
    env.rt.start(&spec).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(60), exits.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.container_id, spec.id);
    assert_eq!(event.exit_code, 3);
    let listed = env.rt.list().await.unwrap();
    assert_eq!(listed[0].task, TaskState::Exited { code: 3 });
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_is_named_in_the_error() {
    let env = env("t-noimage").await;
    let mut spec = busybox_spec("x-0-g1", "x", 0, 1, "true");
    spec.image = "127.0.0.1:5000/gantry/absent:1".into();
    let err = env.rt.start(&spec).await.unwrap_err();
    assert!(matches!(err, RuntimeError::ImageNotFound { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.1:5000/gantry/absent:1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_become_cgroup_limits() {
    let env = env("t-cgroup").await;
    env.rt.import_archive(&env.archive.path).await.unwrap();
    let mut spec = busybox_spec("lim-0-g1", "lim", 0, 1, "sleep 1000");
    spec.memory_bytes = Some(64 * 1024 * 1024);
    spec.cpu_millis = Some(500);
    env.rt.start(&spec).await.unwrap();
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let (memory, cpu) = if v2 {
        let dir = format!("/sys/fs/cgroup/{}/{}", env.namespace, spec.id);
        (format!("{dir}/memory.max"), format!("{dir}/cpu.max"))
    } else {
        (
            format!(
                "/sys/fs/cgroup/memory/{}/{}/memory.limit_in_bytes",
                env.namespace, spec.id
            ),
            format!(
                "/sys/fs/cgroup/cpu/{}/{}/cpu.cfs_quota_us",
                env.namespace, spec.id
            ),
        )
    };
    let memory = std::fs::read_to_string(&memory).unwrap();
    assert_eq!(memory.trim(), (64 * 1024 * 1024).to_string());
    let cpu = std::fs::read_to_string(&cpu).unwrap();
    assert!(cpu.starts_with("50000"), "{cpu}");
    env.cleanup().await;
}
