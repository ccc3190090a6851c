//! Shared watches: one `kube::runtime::watcher` per (namespace, resource) for the whole
//! adapter instance, however many stages wait there, keeping the latest object of each name.
//!
//! A stage's poll registers its attempt as waiting on one object and reads the object from
//! the store, with no request once the watch has listed everything. Every event for an
//! object wakes the attempts waiting on it, so the engine polls at once; the poll hint is
//! only a safety net. A watch starts when a stage first waits in its namespace and stops
//! once no stage has looked there for [`IDLE`]. kube's watcher lists again on 410 Gone and
//! after a dropped stream; its errors are logged (with its backoff between tries), never
//! turned into stage failures.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use baton_core::{AttemptKey, Waker};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};

use crate::config::WorkloadKind;
use crate::job::ATTEMPT_LABEL;

/// How long a watch nobody waits on stays open.
pub const IDLE: Duration = Duration::from_secs(60);

/// What a watch follows in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Watched {
    /// Workloads of one kind.
    Workload(WorkloadKind),
    /// baton's Jobs (those with the attempt label).
    Jobs,
}

impl Watched {
    /// The resource, as kube addresses it.
    pub(crate) fn api_resource(self) -> ApiResource {
        match self {
            Self::Workload(WorkloadKind::Deployment) => ApiResource::erase::<Deployment>(&()),
            Self::Workload(WorkloadKind::StatefulSet) => ApiResource::erase::<StatefulSet>(&()),
            Self::Workload(WorkloadKind::DaemonSet) => ApiResource::erase::<DaemonSet>(&()),
            Self::Jobs => ApiResource::erase::<Job>(&()),
        }
    }
}

/// What the store knows of an object.
#[derive(Debug, Clone)]
pub(crate) enum Seen {
    /// The watch has listed everything: the object as last seen, or `None` when there is
    /// no such object (or none yet: a fresh write may not have arrived).
    Synced(Option<Arc<DynamicObject>>),
    /// The watch has not listed yet: ask the server.
    NotSynced,
}

/// The objects of one (resource, namespace) and who waits on them.
#[derive(Debug)]
struct Feed {
    objects: Mutex<HashMap<String, Arc<DynamicObject>>>,
    synced: AtomicBool,
    waiters: Mutex<HashMap<String, HashSet<AttemptKey>>>,
    wanted_at: Mutex<Instant>,
}

type FeedKey = (Watched, String);

struct Shared {
    client: kube::Client,
    waker: Arc<Mutex<Option<Waker>>>,
    feeds: Mutex<HashMap<FeedKey, Arc<Feed>>>,
}

/// The watches of one adapter instance.
#[derive(Clone)]
pub(crate) struct Watches {
    shared: Arc<Shared>,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every holder makes one insert, removal or read: a panic elsewhere leaves nothing
    // half-done.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Watches {
    /// Watches through `client`, waking through whatever `waker` holds when an event comes.
    pub(crate) fn new(client: kube::Client, waker: Arc<Mutex<Option<Waker>>>) -> Self {
        Self {
            shared: Arc::new(Shared {
                client,
                waker,
                feeds: Mutex::default(),
            }),
        }
    }

    /// Registers `key` as waiting on `name` (starting the watch of its namespace if needed)
    /// and returns what the store holds of it.
    pub(crate) fn look(
        &self,
        what: Watched,
        namespace: &str,
        name: &str,
        key: &AttemptKey,
    ) -> Seen {
        let feed = self.feed(what, namespace);
        locked(&feed.waiters)
            .entry(name.to_owned())
            .or_default()
            .insert(key.clone());
        *locked(&feed.wanted_at) = Instant::now();
        if feed.synced.load(Ordering::Acquire) {
            Seen::Synced(locked(&feed.objects).get(name).cloned())
        } else {
            Seen::NotSynced
        }
    }

    /// `key` no longer waits on `name`.
    pub(crate) fn release(&self, what: Watched, namespace: &str, name: &str, key: &AttemptKey) {
        let feed = locked(&self.shared.feeds)
            .get(&(what, namespace.to_owned()))
            .cloned();
        if let Some(feed) = feed {
            let mut waiters = locked(&feed.waiters);
            if let Some(keys) = waiters.get_mut(name) {
                keys.remove(key);
                if keys.is_empty() {
                    waiters.remove(name);
                }
            }
        }
    }

    /// The number of watches open now (for tests and the benchmark).
    pub(crate) fn open(&self) -> usize {
        locked(&self.shared.feeds).len()
    }

    fn feed(&self, what: Watched, namespace: &str) -> Arc<Feed> {
        let mut feeds = locked(&self.shared.feeds);
        let key = (what, namespace.to_owned());
        if let Some(feed) = feeds.get(&key) {
            return feed.clone();
        }
        let feed = Arc::new(Feed {
            objects: Mutex::default(),
            synced: AtomicBool::new(false),
            waiters: Mutex::default(),
            wanted_at: Mutex::new(Instant::now()),
        });
        feeds.insert(key.clone(), feed.clone());
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.shared.client.clone(), namespace, &what.api_resource());
        let mut config = watcher::Config::default();
        if what == Watched::Jobs {
            config = config.labels(ATTEMPT_LABEL);
        }
        tokio::spawn(follow(
            Arc::downgrade(&self.shared),
            key,
            feed.clone(),
            api,
            config,
        ));
        feed
    }
}

impl Feed {
    /// Wakes the attempts waiting on `name` (every waiter when `None`).
    fn wake(&self, shared: &Shared, name: Option<&str>) {
        let keys: Vec<AttemptKey> = {
            let waiters = locked(&self.waiters);
            match name {
                Some(name) => waiters.get(name).into_iter().flatten().cloned().collect(),
                None => waiters.values().flatten().cloned().collect(),
            }
        };
        if keys.is_empty() {
            return;
        }
        let waker = locked(&shared.waker).clone();
        if let Some(waker) = waker {
            for key in &keys {
                waker.wake(key);
            }
        }
    }

    /// True when nobody looked for [`IDLE`]: a waiting stage looks at least at every poll
    /// hint, which is shorter, so waiters a stage left behind (its run was abandoned) do
    /// not keep the watch open.
    fn idle(&self) -> bool {
        locked(&self.wanted_at).elapsed() >= IDLE
    }
}

/// Runs one watch until it has been idle for [`IDLE`] (or the adapter is gone).
async fn follow(
    shared: Weak<Shared>,
    key: FeedKey,
    feed: Arc<Feed>,
    api: Api<DynamicObject>,
    config: watcher::Config,
) {
    let stream = watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut tick = tokio::time::interval(IDLE / 4);
    let mut listing: Option<HashMap<String, Arc<DynamicObject>>> = None;
    loop {
        tokio::select! {
            item = stream.next() => {
                let Some(shared) = shared.upgrade() else { return };
                match item {
                    Some(Ok(event)) => apply(&shared, &feed, &mut listing, event),
                    Some(Err(e)) => tracing::warn!(
                        resource = %key.0.api_resource().plural, namespace = key.1, error = %e,
                        "kubernetes watch failed; it resumes after a backoff"
                    ),
                    None => return,
                }
            }
            _ = tick.tick() => {
                let Some(shared) = shared.upgrade() else { return };
                if feed.idle() {
                    let mut feeds = locked(&shared.feeds);
                    // Looked at again under the map's lock: a stage may just have started
                    // waiting through this feed.
                    if feed.idle() {
                        feeds.remove(&key);
                        return;
                    }
                }
            }
        }
    }
}

fn apply(
    shared: &Shared,
    feed: &Feed,
    listing: &mut Option<HashMap<String, Arc<DynamicObject>>>,
    event: watcher::Event<DynamicObject>,
) {
    match event {
        watcher::Event::Apply(object) => {
            let name = object.metadata.name.clone().unwrap_or_default();
            locked(&feed.objects).insert(name.clone(), Arc::new(object));
            feed.wake(shared, Some(&name));
        }
        watcher::Event::Delete(object) => {
            let name = object.metadata.name.unwrap_or_default();
            locked(&feed.objects).remove(&name);
            feed.wake(shared, Some(&name));
        }
        watcher::Event::Init => *listing = Some(HashMap::new()),
        watcher::Event::InitApply(object) => {
            let name = object.metadata.name.clone().unwrap_or_default();
            listing
                .get_or_insert_default()
                .insert(name, Arc::new(object));
        }
        watcher::Event::InitDone => {
            *locked(&feed.objects) = listing.take().unwrap_or_default();
            feed.synced.store(true, Ordering::Release);
            // Anything may have changed while the watch was away.
            feed.wake(shared, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn job(name: &str, generation: i64) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": "ci", "generation": generation},
        }))
        .unwrap()
    }

    fn generation(seen: Seen) -> Option<i64> {
        match seen {
            Seen::Synced(object) => object.and_then(|o| o.metadata.generation),
            Seen::NotSynced => panic!("not synced"),
        }
    }

    #[tokio::test]
    async fn events_fill_the_store_and_wake_only_those_waiting_on_the_object() {
        // A server nobody listens on: the feed's own watch only fails (and is logged); the
        // events below are fed by hand.
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
                .unwrap();
        let woken = Arc::new(Mutex::new(Vec::new()));
        let seen = woken.clone();
        let waker = Waker::new(move |key: &AttemptKey| seen.lock().unwrap().push(key.clone()));
        let watches = Watches::new(client, Arc::new(Mutex::new(Some(waker))));
        let key = AttemptKey::new("r", "s", 1);
        let other = AttemptKey::new("r", "t", 1);
        assert!(matches!(
            watches.look(Watched::Jobs, "ci", "a", &key),
            Seen::NotSynced
        ));
        watches.look(Watched::Jobs, "ci", "b", &other);
        // The same (resource, namespace) is one watch, whoever waits.
        assert_eq!(watches.open(), 1);
        let feed = watches.feed(Watched::Jobs, "ci");
        let shared = &watches.shared;
        let mut listing = None;
        apply(shared, &feed, &mut listing, watcher::Event::Init);
        apply(
            shared,
            &feed,
            &mut listing,
            watcher::Event::InitApply(job("a", 1)),
        );
        assert!(
            woken.lock().unwrap().is_empty(),
            "a listing wakes once it is complete"
        );
        apply(shared, &feed, &mut listing, watcher::Event::InitDone);
        assert_eq!(
            woken.lock().unwrap().len(),
            2,
            "every waiter, after a (re)list"
        );
        assert_eq!(
            generation(watches.look(Watched::Jobs, "ci", "a", &key)),
            Some(1)
        );
        assert_eq!(
            generation(watches.look(Watched::Jobs, "ci", "b", &other)),
            None
        );

        woken.lock().unwrap().clear();
        apply(
            shared,
            &feed,
            &mut listing,
            watcher::Event::Apply(job("a", 2)),
        );
        apply(
            shared,
            &feed,
            &mut listing,
            watcher::Event::Apply(job("c", 1)),
        );
        assert_eq!(woken.lock().unwrap().as_slice(), std::slice::from_ref(&key));
        assert_eq!(
            generation(watches.look(Watched::Jobs, "ci", "a", &key)),
            Some(2)
        );

        woken.lock().unwrap().clear();
        apply(
            shared,
            &feed,
            &mut listing,
            watcher::Event::Delete(job("a", 2)),
        );
        assert_eq!(woken.lock().unwrap().as_slice(), std::slice::from_ref(&key));
        assert_eq!(
            generation(watches.look(Watched::Jobs, "ci", "a", &key)),
            None
        );

        woken.lock().unwrap().clear();
        watches.release(Watched::Jobs, "ci", "a", &key);
        apply(
            shared,
            &feed,
            &mut listing,
            watcher::Event::Apply(job("a", 3)),
        );
        assert!(
            woken.lock().unwrap().is_empty(),
            "a released attempt is not woken"
        );
        // Another namespace or kind is another watch.
        watches.look(Watched::Workload(WorkloadKind::Deployment), "ci", "a", &key);
        watches.look(Watched::Jobs, "app", "a", &key);
        assert_eq!(watches.open(), 3);
    }
}
