//! Server-sent events for a page: its `main` fragment again whenever the
//! applied index or the Raft view (leader, term) changes, coalesced to at
//! most about three per second and sent only when the HTML differs. A
//! stream ends when the gateway stops, so it never holds up a shutdown.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;

use super::pages::Page;
use super::Site;

/// Changes closer together than this are sent as one.
const COALESCE: Duration = Duration::from_millis(300);
/// Re-rendered at least this often (ages and the drain's reasons move with
/// time, not only with the log).
const REFRESH: Duration = Duration::from_secs(5);

struct Follow {
    site: Site,
    page: Page,
    applied: tokio::sync::watch::Receiver<u64>,
    raft: tokio::sync::watch::Receiver<
        openraft::RaftMetrics<crate::cluster::NodeId, openraft::BasicNode>,
    >,
    last: Option<String>,
}

pub async fn stream(site: Site, page: Page) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let follow = Follow {
        applied: site.cluster.state().subscribe(),
        raft: site.cluster.metrics_watch(),
        site,
        page,
        last: None,
    };
    let events = futures::stream::unfold(follow, |mut f| async move {
        loop {
            if f.last.is_some() {
                tokio::select! {
                    _ = f.site.shutdown.cancelled() => return None,
                    changed = f.applied.changed() => if changed.is_err() { return None },
                    changed = f.raft.changed() => if changed.is_err() { return None },
                    _ = tokio::time::sleep(REFRESH) => {}
                }
                tokio::select! {
                    _ = f.site.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(COALESCE) => {}
                }
            }
            let html = match super::render_main(&f.site, &f.page) {
                Some(main) => main.into_string(),
                None => "<main><h2>Gone</h2><p>Nothing is called that any more.</p></main>".into(),
            };
            if f.last.as_deref() != Some(html.as_str()) {
                let event = Event::default().data(html.clone());
                f.last = Some(html);
                return Some((Ok(event), f));
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
