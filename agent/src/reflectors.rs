//! Reflectors the agent runs: a store of one kind of object kept in sync
//! by a watcher (with kube's backoff), a notification on every change, and
//! the watch's health (its last error, cleared by the next success). The
//! store keeps the last known objects through API outages.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::runtime::reflector::Store;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Api;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The last error of a watch, `None` once it works again.
#[derive(Debug, Default)]
pub struct WatchHealth(Mutex<Option<String>>);

impl WatchHealth {
    pub fn last_error(&self) -> Option<String> {
        self.0.lock().expect("health lock").clone()
    }

    fn set(&self, error: Option<String>) {
        *self.0.lock().expect("health lock") = error;
    }
}

/// A running reflector: its store, health and task (stopped on drop).
#[derive(Debug)]
pub struct Reflector<K: kube::Resource<DynamicType = ()> + 'static> {
    pub store: Store<K>,
    pub health: Arc<WatchHealth>,
    task: JoinHandle<()>,
}

impl<K: kube::Resource<DynamicType = ()> + 'static> Drop for Reflector<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<K: kube::Resource<DynamicType = ()> + Clone + 'static> Reflector<K> {
    /// Whether the store holds a complete first listing.
    pub fn is_ready(&self) -> bool {
        futures::FutureExt::now_or_never(self.store.wait_until_ready()).is_some_and(|r| r.is_ok())
    }
}

/// Starts a reflector of `api` (filtered by `config`) that notifies
/// `changed` on every change and when a listing completes; `what` names
/// it in logs.
pub fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: Arc<Notify>,
    what: String,
) -> Reflector<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    // Every event notifies, the end of a listing too: a listing with no
    // objects (a linked cluster without Peers) touches none, and whoever
    // waits for the store to be ready must hear that it is.
    let stream = reflector(writer, watcher(api, config)).default_backoff();
    let health = Arc::new(WatchHealth::default());
    let task_health = health.clone();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => {
                    task_health.set(None);
                    changed.notify_one();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watching {what} (retrying with backoff)");
                    task_health.set(Some(e.to_string()));
                    // A linked cluster turning unreachable is news too.
                    changed.notify_one();
                }
            }
        }
    });
    Reflector {
        store,
        health,
        task,
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use k8s_openapi::api::core::v1::Node;
    use kube::client::Body;

    use super::*;

    /// A kube client whose API server lists no objects and then keeps
    /// every watch open without events.
    fn empty_api_server() -> kube::Client {
        let service = tower::service_fn(|request: http::Request<Body>| async move {
            if request
                .uri()
                .query()
                .is_some_and(|q| q.contains("watch=true"))
            {
                futures::future::pending::<()>().await;
            }
            let list = r#"{"apiVersion":"v1","kind":"NodeList","metadata":{"resourceVersion":"7"},"items":[]}"#;
            Ok::<_, Infallible>(http::Response::new(Body::from(list.as_bytes().to_vec())))
        });
        kube::Client::new(service, "default")
    }

    #[tokio::test]
    async fn a_listing_without_objects_is_news() {
        let changed = Arc::new(Notify::new());
        let nodes = spawn_reflector(
            Api::<Node>::all(empty_api_server()),
            watcher::Config::default(),
            changed.clone(),
            "Nodes".into(),
        );
        let mut heard = false;
        for _ in 0..10 {
            tokio::time::timeout(Duration::from_secs(30), changed.notified())
                .await
                .expect("notified when the empty listing completes");
            heard = true;
            if nodes.is_ready() {
                break;
            }
        }
        assert!(
            heard && nodes.is_ready(),
            "the store is ready once notified"
        );
        assert!(nodes.store.is_empty() && nodes.health.last_error().is_none());
    }
}
