//! Running an agent against a real runtime and waiting for its reports.
#![allow(dead_code)]

use gantry_node::{
    Agent, AgentConfig, AgentEvent, ContainerdRuntime, DesiredInstance, ImageSource, InstanceReport,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Short timings for tests; image access from the defaults.
pub fn config() -> AgentConfig {
    AgentConfig {
        stop_grace: Duration::from_millis(500),
        resync_interval: Duration::from_secs(1),
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(2),
        backoff_reset_after: Duration::from_secs(600),
        runtime_retry_max: Duration::from_secs(1),
        ..AgentConfig::default()
    }
}

pub struct Running {
    pub desired: watch::Sender<Vec<DesiredInstance>>,
    pub events: mpsc::Receiver<AgentEvent>,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<()>,
    pub seen: Vec<AgentEvent>,
}

pub fn start_agent(rt: &ContainerdRuntime, desired: Vec<DesiredInstance>) -> Running {
    start_agent_with(rt, desired, config(), None)
}

/// An agent with its own config and, optionally, an image source.
pub fn start_agent_with(
    rt: &ContainerdRuntime,
    desired: Vec<DesiredInstance>,
    config: AgentConfig,
    source: Option<Arc<dyn ImageSource>>,
) -> Running {
    let (tx, rx) = watch::channel(desired);
    let (mut agent, events) = Agent::new(Arc::new(rt.clone()), config, rx);
    if let Some(source) = source {
        agent = agent.with_image_source(source);
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(agent.run(async move {
        let _ = stopped.await;
    }));
    Running {
        desired: tx,
        events,
        stop: Some(stop),
        handle,
        seen: Vec::new(),
    }
}

impl Running {
    /// Waits for an event matching `pred`; the deadline only avoids a hang.
    pub async fn wait(&mut self, what: &str, pred: impl Fn(&AgentEvent) -> bool) -> AgentEvent {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) => {
                    self.seen.push(e.clone());
                    if pred(&e) {
                        return e;
                    }
                }
                Ok(None) => panic!(
                    "agent stopped while waiting for {what}; seen {:#?}",
                    self.seen
                ),
                Err(_) => panic!("timed out waiting for {what}; seen {:#?}", self.seen),
            }
        }
    }

    pub async fn wait_instance(
        &mut self,
        id: &str,
        what: &str,
        pred: impl Fn(&InstanceReport) -> bool,
    ) -> InstanceReport {
        let e = self
            .wait(
                what,
                |e| matches!(e, AgentEvent::Instance(r) if r.container_id == id && pred(r)),
            )
            .await;
        match e {
            AgentEvent::Instance(r) => r,
            _ => unreachable!(),
        }
    }

    pub async fn stop(mut self) -> Vec<AgentEvent> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.handle.await.unwrap();
        while let Ok(e) = self.events.try_recv() {
            self.seen.push(e);
        }
        self.seen
    }
}
