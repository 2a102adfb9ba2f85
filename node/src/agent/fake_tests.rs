//! The loop itself (not just `decide`) against an in-memory runtime.

use super::*;
use crate::runtime::Started;
use std::sync::Mutex;

#[derive(Default)]
struct FakeState {
    up: bool,
    containers: Vec<ActualContainer>,
    starts: u32,
    exit_senders: Vec<mpsc::Sender<ExitEvent>>,
    /// How long a remove takes (a container that ignores SIGTERM).
    remove_takes: Duration,
}

#[derive(Default)]
struct Fake(Mutex<FakeState>);

fn down() -> RuntimeError {
    RuntimeError::Unavailable("connection refused".into())
}

impl Fake {
    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }

    fn check_up(&self) -> Result<(), RuntimeError> {
        if self.with(|s| s.up) {
            Ok(())
        } else {
            Err(down())
        }
    }
}

impl Runtime for Fake {
    async fn check(&self) -> Result<String, RuntimeError> {
        self.check_up().map(|_| "fake".to_string())
    }

    async fn ensure_image(&self, _image: &str) -> Result<(), RuntimeError> {
        self.check_up()
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<Started, RuntimeError> {
        self.check_up()?;
        self.with(|s| {
            s.starts += 1;
            s.containers.push(ActualContainer {
                id: spec.id.clone(),
                workload: spec.workload.clone(),
                replica: spec.replica,
                generation: spec.generation,
                image: spec.image.clone(),
                restarts: 0,
                task: TaskState::Running,
                pid: Some(100 + s.starts),
            });
            Ok(Started {
                container_id: spec.id.clone(),
                pid: 100 + s.starts,
            })
        })
    }

    async fn restart(&self, container_id: &str, restarts: u32) -> Result<Started, RuntimeError> {
        self.check_up()?;
        self.with(|s| {
            s.starts += 1;
            let pid = 100 + s.starts;
            let c = s
                .containers
                .iter_mut()
                .find(|c| c.id == container_id)
                .ok_or_else(|| RuntimeError::NotFound(container_id.into()))?;
            c.task = TaskState::Running;
            c.pid = Some(pid);
            c.restarts = restarts;
            Ok(Started {
                container_id: container_id.into(),
                pid,
            })
        })
    }

    async fn remove(
        &self,
        container_id: &str,
        _grace: Duration,
    ) -> Result<Option<i32>, RuntimeError> {
        self.check_up()?;
        tokio::time::sleep(self.with(|s| s.remove_takes)).await;
        self.with(|s| s.containers.retain(|c| c.id != container_id));
        Ok(Some(137))
    }

    async fn list(&self) -> Result<Vec<ActualContainer>, RuntimeError> {
        self.check_up()?;
        Ok(self.with(|s| s.containers.clone()))
    }

    async fn exits(&self) -> Result<mpsc::Receiver<ExitEvent>, RuntimeError> {
        self.check_up()?;
        let (tx, rx) = mpsc::channel(8);
        self.with(|s| s.exit_senders.push(tx));
        Ok(rx)
    }
}

fn fast() -> AgentConfig {
    AgentConfig {
        stop_grace: Duration::from_millis(10),
        resync_interval: Duration::from_millis(50),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        backoff_reset_after: Duration::from_secs(600),
        runtime_retry_max: Duration::from_millis(100),
        ..AgentConfig::default()
    }
}

async fn next_matching(
    rx: &mut mpsc::Receiver<AgentEvent>,
    pred: impl Fn(&AgentEvent) -> bool,
) -> AgentEvent {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let e = rx.recv().await.expect("agent stopped");
            if pred(&e) {
                return e;
            }
        }
    })
    .await
    .expect("event in time")
}

/// Generation 1 of replica 0 of `a`, running as pid 42.
fn running_a_g1(restarts: u32) -> ActualContainer {
    ActualContainer {
        id: "a-g1".into(),
        workload: "a".into(),
        replica: 0,
        generation: 1,
        image: "img".into(),
        restarts,
        task: TaskState::Running,
        pid: Some(42),
    }
}

#[tokio::test]
async fn unavailable_runtime_is_reported_then_containers_adopted() {
    let spec = ContainerSpec::new("a-g1", "a", 0, 1, "img");
    let fake = Arc::new(Fake::default());
    fake.with(|s| s.containers.push(running_a_g1(4)));
    let (_tx, rx) = watch::channel(vec![DesiredInstance::new(spec, RestartPolicy::Always)]);
    let (agent, mut events) = Agent::new(fake.clone(), fast(), rx);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(agent.run(async move {
        let _ = stopped.await;
    }));
    let e = next_matching(&mut events, |_| true).await;
    assert!(
        matches!(e, AgentEvent::RuntimeUnavailable { ref reason } if reason.contains("connection refused")),
        "{e:?}"
    );
    fake.with(|s| s.up = true);
    next_matching(&mut events, |e| {
        matches!(e, AgentEvent::RuntimeAvailable { .. })
    })
    .await;
    let e = next_matching(&mut events, |e| matches!(e, AgentEvent::Instance(_))).await;
    let AgentEvent::Instance(r) = e else {
        unreachable!()
    };
    assert_eq!(
        (r.state, r.pid, r.restarts),
        (InstanceState::Running, Some(42), 4)
    );
    assert_eq!(fake.with(|s| s.starts), 0);
    let _ = stop.send(());
    handle.await.unwrap();
}

#[tokio::test]
async fn exited_container_restarts_after_backoff_with_count() {
    let spec = ContainerSpec::new("a-g1", "a", 0, 1, "img");
    let fake = Arc::new(Fake(Mutex::new(FakeState {
        up: true,
        ..Default::default()
    })));
    let (_tx, rx) = watch::channel(vec![DesiredInstance::new(spec, RestartPolicy::OnFailure)]);
    let (agent, mut events) = Agent::new(fake.clone(), fast(), rx);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(agent.run(async move {
        let _ = stopped.await;
    }));
    let running =
        |e: &AgentEvent| matches!(e, AgentEvent::Instance(r) if r.state == InstanceState::Running);
    next_matching(&mut events, running).await;
    fake.with(|s| s.containers[0].task = TaskState::Exited { code: 2 });
    let e = next_matching(
        &mut events,
        |e| matches!(e, AgentEvent::Instance(r) if r.state == InstanceState::Exited),
    )
    .await;
    assert!(matches!(e, AgentEvent::Instance(ref r) if r.exit_code == Some(2)));
    let e = next_matching(&mut events, running).await;
    assert!(matches!(e, AgentEvent::Instance(ref r) if r.restarts == 1));
    // A clean exit under on-failure stays exited.
    fake.with(|s| s.containers[0].task = TaskState::Exited { code: 0 });
    next_matching(
        &mut events,
        |e| matches!(e, AgentEvent::Instance(r) if r.state == InstanceState::Exited),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.with(|s| s.starts), 2);
    let _ = stop.send(());
    handle.await.unwrap();
}

/// A start decided behind a remove that takes the whole stop grace must
/// not run if, meanwhile, the instance was told to stop here (a singleton
/// moving away would otherwise run twice).
#[tokio::test(start_paused = true)]
async fn a_start_queued_behind_a_slow_remove_is_dropped_when_no_longer_wanted() {
    let fake = Arc::new(Fake(Mutex::new(FakeState {
        up: true,
        remove_takes: Duration::from_secs(10),
        ..Default::default()
    })));
    fake.with(|s| s.containers.push(running_a_g1(0)));
    let next = ContainerSpec::new("a-g2", "a", 0, 2, "img");
    let run = DesiredInstance::new(next.clone(), RestartPolicy::Always);
    let (tx, rx) = watch::channel(vec![run.clone()]);
    let (agent, mut events) = Agent::new(fake.clone(), fast(), rx);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(agent.run(async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fake.with(|s| s.containers.len()),
        1,
        "the remove is under way"
    );
    tx.send_replace(vec![DesiredInstance {
        stop: true,
        stop_mark: Some(7),
        ..run
    }]);
    let e = next_matching(&mut events, |e| {
        matches!(e, AgentEvent::Instance(r) if r.state == InstanceState::Exited && r.container_id == "a-g2")
    })
    .await;
    // Made under that stop, and saying so.
    assert!(
        matches!(e, AgentEvent::Instance(ref r) if r.reason.as_deref() == Some("not running here") && r.stop_mark == Some(7)),
        "{e:?}"
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(fake.with(|s| (s.starts, s.containers.len())), (0, 0));
    let _ = stop.send(());
    handle.await.unwrap();
}

#[test]
fn backoff_doubles_to_cap_and_resets_after_long_run() {
    let config = fast();
    let mut b = Backoff::new(&config);
    let now = Instant::now();
    let delays: Vec<u128> = (0..5)
        .map(|_| b.next_delay(&config, now).as_millis())
        .collect();
    assert_eq!(delays, [20, 40, 80, 100, 100]);
    b.running_since = Some(now);
    let later = now + config.backoff_reset_after;
    assert_eq!(b.next_delay(&config, later), config.backoff_initial);
}
