//! Helpers for the end-to-end tests: a private containerd per test and raw
//! containerd queries that check effects independently of our adapter.
#![allow(dead_code)]

pub mod agent;

use containerd_client::services::v1::snapshots::StatSnapshotRequest;
use containerd_client::services::v1::{
    GetContainerRequest, GetImageRequest, GetRequest, KillRequest,
};
use containerd_client::{with_namespace, Client};
use gantry_node::testing::{busybox_oci_archive, BusyboxArchive, PrivateContainerd};
use gantry_node::{ContainerSpec, ContainerdRuntime};
use std::future::Future;
use std::time::Duration;
use tonic::{Code, Request};

pub const IMAGE: &str = "127.0.0.1:5000/gantry/busybox:test";

/// Field order matters: containerd must be dropped (and clean up its
/// containers) before the temp dir holding its socket is deleted.
pub struct Env {
    pub containerd: PrivateContainerd,
    pub rt: ContainerdRuntime,
    pub namespace: String,
    pub archive: BusyboxArchive,
    pub dir: tempfile::TempDir,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A private containerd (fails loudly when containerd is not installed) and
/// a runtime on namespace `ns`, with the busybox archive built but not
/// imported.
pub async fn env(ns: &str) -> Env {
    init_tracing();
    let dir = tempfile::Builder::new()
        .prefix("gn")
        .tempdir_in("/tmp")
        .unwrap();
    let containerd = PrivateContainerd::start(dir.path().join("ctd"))
        .await
        .unwrap();
    let rt = ContainerdRuntime::connect(containerd.config(ns))
        .await
        .unwrap();
    let archive = busybox_oci_archive(dir.path().join("busybox.tar"), IMAGE).unwrap();
    Env {
        dir,
        containerd,
        rt,
        namespace: ns.to_string(),
        archive,
    }
}

impl Env {
    pub async fn client(&self) -> Client {
        Client::from_path(self.containerd.socket()).await.unwrap()
    }

    pub async fn image_exists(&self, name: &str) -> bool {
        let req = with_namespace!(
            GetImageRequest {
                name: name.to_string()
            },
            self.namespace
        );
        match self.client().await.images().get(req).await {
            Ok(_) => true,
            Err(s) if s.code() == Code::NotFound => false,
            Err(s) => panic!("get image: {s}"),
        }
    }

    pub async fn snapshot_exists(&self, key: &str) -> bool {
        let req = with_namespace!(
            StatSnapshotRequest {
                snapshotter: "overlayfs".into(),
                key: key.to_string()
            },
            self.namespace
        );
        match self.client().await.snapshots().stat(req).await {
            Ok(_) => true,
            Err(s) if s.code() == Code::NotFound => false,
            Err(s) => panic!("stat snapshot: {s}"),
        }
    }

    pub async fn container_exists(&self, id: &str) -> bool {
        let req = with_namespace!(GetContainerRequest { id: id.to_string() }, self.namespace);
        match self.client().await.containers().get(req).await {
            Ok(_) => true,
            Err(s) if s.code() == Code::NotFound => false,
            Err(s) => panic!("get container: {s}"),
        }
    }

    pub async fn task_exists(&self, id: &str) -> bool {
        let req = with_namespace!(
            GetRequest {
                container_id: id.to_string(),
                exec_id: String::new()
            },
            self.namespace
        );
        match self.client().await.tasks().get(req).await {
            Ok(_) => true,
            Err(s) if s.code() == Code::NotFound => false,
            Err(s) => panic!("get task: {s}"),
        }
    }

    /// Kills a task from outside gantry, as an OOM kill or a crash would.
    pub async fn kill_task(&self, id: &str) {
        let req = with_namespace!(
            KillRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
                signal: 9,
                all: true
            },
            self.namespace
        );
        self.client().await.tasks().kill(req).await.unwrap();
    }

    pub fn log_file(&self, id: &str) -> std::path::PathBuf {
        self.rt.log_path(id)
    }

    pub async fn cleanup(&self) {
        gantry_node::testing::remove_all(&self.rt).await.unwrap();
    }
}

pub fn busybox_spec(
    id: &str,
    workload: &str,
    replica: u32,
    generation: u64,
    script: &str,
) -> ContainerSpec {
    let mut spec = ContainerSpec::new(id, workload, replica, generation, IMAGE);
    spec.command = vec!["sh".into(), "-c".into(), script.into()];
    spec
}

/// Polls `check` until it yields a value; the deadline only prevents a
/// hang, it is not what the test asserts.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
