//! Server-sent events for a page: its `main` fragment again whenever what it
//! shows may have changed, coalesced, and sent only when the HTML differs.
//! A stream ends when its server stops, so it never holds up a shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio_util::sync::CancellationToken;

use super::pages::Page;
use super::Site;

/// Changes closer together than this are sent as one.
const COALESCE: Duration = Duration::from_millis(300);
/// Re-rendered at least this often (ages and the drain's reasons move with
/// time, not only with the log).
const REFRESH: Duration = Duration::from_secs(5);

/// What a live page follows.
pub trait Source: Send + 'static {
    /// The page's `main` fragment now.
    fn render(&self) -> String;
    /// Returns when what the page shows may have changed; false when it
    /// never will again (the state machine is gone).
    fn changed(&mut self) -> impl Future<Output = bool> + Send;
}

/// The stream of `source`'s fragments until `stop`.
pub fn follow<S: Source>(
    source: S,
    stop: CancellationToken,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = futures::stream::unfold(
        (source, stop, None::<String>),
        |(mut source, stop, last)| async move {
            let mut last = last;
            loop {
                if last.is_some() {
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        more = source.changed() => if !more { return None },
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(COALESCE) => {}
                    }
                }
                let html = source.render();
                if last.as_deref() != Some(html.as_str()) {
                    let event = Event::default().data(html.clone());
                    return Some((Ok(event), (source, stop, Some(html))));
                }
                last = Some(html);
            }
        },
    );
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// A gateway page follows the applied index and the Raft view (leader,
/// term), and the clock every few seconds.
pub struct GatewayPage {
    site: Site,
    page: Page,
    applied: tokio::sync::watch::Receiver<u64>,
    raft: tokio::sync::watch::Receiver<
        openraft::RaftMetrics<crate::cluster::NodeId, openraft::BasicNode>,
    >,
}

impl GatewayPage {
    pub fn new(site: Site, page: Page) -> Self {
        Self {
            applied: site.cluster.state().subscribe(),
            raft: site.cluster.metrics_watch(),
            site,
            page,
        }
    }
}

impl Source for GatewayPage {
    fn render(&self) -> String {
        match super::render_main(&self.site, &self.page) {
            Some(main) => main.into_string(),
            None => "<main><h2>Gone</h2><p>Nothing is called that any more.</p></main>".into(),
        }
    }

    async fn changed(&mut self) -> bool {
        tokio::select! {
            changed = self.applied.changed() => changed.is_ok(),
            changed = self.raft.changed() => changed.is_ok(),
            _ = tokio::time::sleep(REFRESH) => true,
        }
    }
}

/// The gateway's live stream of `page`.
pub async fn stream(site: Site, page: Page) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stop = site.shutdown.clone();
    follow(GatewayPage::new(site, page), stop)
}
