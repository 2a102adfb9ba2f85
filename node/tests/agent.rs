//! The reconcile loop against a real private containerd.

mod common;

use common::agent::start_agent;
use common::{busybox_spec, env, Env};
use gantry_node::{
    AgentEvent, ContainerSpec, DesiredInstance, InstanceState, RestartPolicy, Runtime,
};

fn want(spec: ContainerSpec, restart: RestartPolicy) -> DesiredInstance {
    DesiredInstance::new(spec, restart)
}

async fn imported(ns: &str) -> Env {
    let env = env(ns).await;
    env.rt.import_archive(&env.archive.path).await.unwrap();
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_task_is_restarted_and_counted() {
    let env = imported("a-restart").await;
    let spec = busybox_spec("svc-0-g1", "svc", 0, 1, "echo up; sleep 1000");
    let mut agent = start_agent(&env.rt, vec![want(spec.clone(), RestartPolicy::Always)]);
    let first = agent
        .wait_instance(&spec.id, "running", |r| r.state == InstanceState::Running)
        .await;
    env.kill_task(&spec.id).await;
    let exited = agent
        .wait_instance(&spec.id, "exited", |r| r.state == InstanceState::Exited)
        .await;
    assert_eq!(exited.exit_code, Some(137));
    let again = agent
        .wait_instance(&spec.id, "running again", |r| {
            r.state == InstanceState::Running
        })
        .await;
    assert_eq!(again.restarts, 1);
    assert_ne!(again.pid, first.pid);
    let listed = env.rt.list().await.unwrap();
    assert_eq!(listed[0].restarts, 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_is_reported_and_never_policy_leaves_it_exited() {
    let env = imported("a-exit").await;
    let spec = busybox_spec("job-0-g1", "job", 0, 1, "exit 3");
    let mut agent = start_agent(&env.rt, vec![want(spec.clone(), RestartPolicy::Never)]);
    let exited = agent
        .wait_instance(&spec.id, "exited", |r| r.state == InstanceState::Exited)
        .await;
    assert_eq!(exited.exit_code, Some(3));
    assert_eq!(exited.restarts, 0);
    let seen = agent.stop().await;
    assert!(!seen
        .iter()
        .any(|e| matches!(e, AgentEvent::Instance(r) if r.restarts > 0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_change_replaces_and_removal_cleans_up() {
    let env = imported("a-gen").await;
    let g1 = busybox_spec("web-0-g1", "web", 0, 1, "sleep 1000");
    let mut agent = start_agent(&env.rt, vec![want(g1.clone(), RestartPolicy::Always)]);
    agent
        .wait_instance(&g1.id, "g1 running", |r| r.state == InstanceState::Running)
        .await;
    let g2 = busybox_spec("web-0-g2", "web", 0, 2, "sleep 1000");
    agent
        .desired
        .send(vec![want(g2.clone(), RestartPolicy::Always)])
        .unwrap();
    let removed = agent
        .wait_instance(&g1.id, "g1 removed", |r| r.state == InstanceState::Removed)
        .await;
    assert_eq!(removed.generation, 1);
    let running = agent
        .wait_instance(&g2.id, "g2 running", |r| r.state == InstanceState::Running)
        .await;
    assert_eq!(running.generation, 2);
    let ids: Vec<String> = env
        .rt
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, vec![g2.id.clone()]);
    assert!(!env.container_exists(&g1.id).await);

    agent.desired.send(vec![]).unwrap();
    agent
        .wait_instance(&g2.id, "g2 removed", |r| r.state == InstanceState::Removed)
        .await;
    assert!(!env.task_exists(&g2.id).await);
    assert!(!env.container_exists(&g2.id).await);
    assert!(!env.snapshot_exists(&g2.id).await);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_agent_adopts_running_containers() {
    let env = imported("a-adopt").await;
    let spec = busybox_spec("db-0-g1", "db", 0, 1, "sleep 1000");
    let desired = vec![want(spec.clone(), RestartPolicy::Always)];
    let mut agent = start_agent(&env.rt, desired.clone());
    let first = agent
        .wait_instance(&spec.id, "running", |r| r.state == InstanceState::Running)
        .await;
    agent.stop().await;

    let mut agent = start_agent(&env.rt, desired);
    let adopted = agent
        .wait_instance(&spec.id, "adopted", |r| r.state == InstanceState::Running)
        .await;
    assert_eq!(adopted.pid, first.pid);
    assert_eq!(adopted.restarts, 0);
    let seen = agent.stop().await;
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, AgentEvent::Instance(r) if r.state == InstanceState::Starting)),
        "adoption must not restart: {seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_image_fails_naming_the_image() {
    let env = env("a-noimage").await;
    let mut spec = busybox_spec("x-0-g1", "x", 0, 1, "true");
    spec.image = "127.0.0.1:5000/gantry/absent:1".into();
    let mut agent = start_agent(&env.rt, vec![want(spec.clone(), RestartPolicy::Always)]);
    let failed = agent
        .wait_instance(&spec.id, "failed", |r| r.state == InstanceState::Failed)
        .await;
    let reason = failed.reason.unwrap();
    assert!(
        reason.contains("127.0.0.1:5000/gantry/absent:1"),
        "{reason}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_restart_adopts_without_restarting() {
    let mut env = imported("a-ctdrestart").await;
    let spec = busybox_spec("edge-0-g1", "edge", 0, 1, "sleep 1000");
    let mut agent = start_agent(&env.rt, vec![want(spec.clone(), RestartPolicy::Always)]);
    let first = agent
        .wait_instance(&spec.id, "running", |r| r.state == InstanceState::Running)
        .await;

    env.containerd.kill();
    let down = agent
        .wait("runtime unavailable", |e| {
            matches!(e, AgentEvent::RuntimeUnavailable { .. })
        })
        .await;
    if let AgentEvent::RuntimeUnavailable { reason } = down {
        assert!(!reason.is_empty());
    }
    env.containerd.restart().await.unwrap();
    agent
        .wait("runtime available", |e| {
            matches!(e, AgentEvent::RuntimeAvailable { .. })
        })
        .await;
    let listed = env.rt.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].pid, first.pid);
    assert_eq!(listed[0].restarts, 0);
    let seen = agent.stop().await;
    let after_first = seen
        .iter()
        .skip_while(|e| !matches!(e, AgentEvent::RuntimeUnavailable { .. }))
        .filter(|e| matches!(e, AgentEvent::Instance(r) if r.state != InstanceState::Running || r.pid != first.pid))
        .count();
    assert_eq!(after_first, 0, "nothing restarted: {seen:#?}");
}
