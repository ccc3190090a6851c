//! Object storage: every object by (resource, namespace, name), one global
//! `resourceVersion` counter, and the event log watches replay from (kept until
//! [`Store::compact`] forgets it) and the live feed they follow.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::resources;

/// Where an object lives: its resource's plural, its namespace (`""` for cluster-scoped
/// ones) and its name.
pub(super) type Key = (String, String, String);

/// How many events the log keeps before the oldest are forgotten (a watch from before
/// them gets 410): a benchmark's 200 rollouts write a few thousand, and the objects they
/// hold stay within some tens of megabytes.
const LOG_CAPACITY: usize = 50_000;

/// One change to an object, as a watch sends it.
#[derive(Debug)]
pub(super) struct Event {
    /// The resourceVersion the change made.
    pub(super) rv: u64,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub(super) kind: &'static str,
    /// The resource's plural.
    pub(super) resource: String,
    /// The object's namespace.
    pub(super) namespace: String,
    /// The object after the change (before it, for `DELETED`).
    pub(super) object: Value,
}

/// What a watch stream receives live.
#[derive(Debug, Clone)]
pub(super) enum Feed {
    /// A change.
    Event(Arc<Event>),
    /// Every open stream ends now.
    Drop,
}

/// The stored objects and their history.
#[derive(Debug)]
pub(super) struct Store {
    objects: BTreeMap<Key, Value>,
    uids: HashMap<String, Key>,
    rv: u64,
    log: VecDeque<Arc<Event>>,
    /// Changes up to this resourceVersion are forgotten.
    floor: u64,
    feed: broadcast::Sender<Feed>,
    seq: u64,
}

impl Store {
    pub(super) fn new(feed: broadcast::Sender<Feed>) -> Self {
        Self {
            objects: BTreeMap::new(),
            uids: HashMap::new(),
            rv: 1,
            log: VecDeque::new(),
            floor: 0,
            feed,
            seq: 0,
        }
    }

    /// The latest resourceVersion.
    pub(super) fn rv(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch can start from.
    pub(super) fn floor(&self) -> u64 {
        self.floor
    }

    /// A live feed of changes after now, and the changes after `since` already logged
    /// (taken together, so none is missed or sent twice).
    pub(super) fn subscribe(&self, since: u64) -> (broadcast::Receiver<Feed>, Vec<Arc<Event>>) {
        // The log is in resourceVersion order.
        let start = self.log.partition_point(|e| e.rv <= since);
        let past = self.log.range(start..).cloned().collect();
        (self.feed.subscribe(), past)
    }

    /// Forgets the log: a watch from any resourceVersion handed out so far gets 410. The
    /// counter moves on, so a list made after this answers one a watch can start from.
    pub(super) fn compact(&mut self) {
        self.log.clear();
        self.rv += 1;
        self.floor = self.rv;
    }

    /// Ends every open watch stream.
    pub(super) fn drop_watches(&self) {
        let _ = self.feed.send(Feed::Drop);
    }

    /// A fresh number, for names and uids.
    pub(super) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Five characters of a generated name (`generateName`), in the API server's alphabet.
    pub(super) fn random_suffix(&mut self) -> String {
        suffix(self.next_seq(), 5)
    }

    pub(super) fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// The key of the object with `uid`, if it exists.
    pub(super) fn by_uid(&self, uid: &str) -> Option<&Key> {
        self.uids.get(uid)
    }

    /// Objects of `resource` in `namespace` (every namespace for `None`), by name. Keys
    /// sort by resource, then namespace, so one namespace is one contiguous range.
    pub(super) fn list<'a>(
        &'a self,
        resource: &'a str,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
        let start = (
            resource.to_owned(),
            namespace.unwrap_or_default().to_owned(),
            String::new(),
        );
        self.objects
            .range(start..)
            .take_while(move |(k, _)| k.0 == resource && namespace.is_none_or(|ns| k.1 == ns))
    }

    /// Keys of `resource` objects in every namespace.
    pub(super) fn keys(&self, resource: &str) -> Vec<Key> {
        self.list(resource, None).map(|(k, _)| k.clone()).collect()
    }

    /// Every key (for garbage collection).
    pub(super) fn all_keys(&self) -> Vec<Key> {
        self.objects.keys().cloned().collect()
    }

    /// Stores a new object: gives it a uid, a creation time, generation 1, a
    /// resourceVersion and its `apiVersion`/`kind`, and logs it `ADDED`.
    pub(super) fn insert(&mut self, key: Key, mut object: Value) -> Value {
        let uid = uid(self.next_seq());
        if let Some(r) = resources::by_plural(&key.0) {
            object["apiVersion"] = json!(r.api_version());
            object["kind"] = json!(r.kind);
        }
        let meta = metadata(&mut object);
        meta.insert("name".into(), json!(key.2));
        if !key.1.is_empty() {
            meta.insert("namespace".into(), json!(key.1));
        }
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(timestamp()));
        if object.get("spec").is_some() {
            metadata(&mut object).insert("generation".into(), json!(1));
        }
        self.uids.insert(uid, key.clone());
        self.write(key, object, "ADDED")
    }

    /// Replaces a stored object: bumps its generation when its `spec` changed, gives it a
    /// new resourceVersion and logs it `MODIFIED`.
    pub(super) fn replace(&mut self, key: Key, mut object: Value) -> Value {
        if let Some(old) = self.objects.get(&key) {
            let generation = old["metadata"]["generation"].as_i64();
            let bumped = match generation {
                Some(g) if old.get("spec") != object.get("spec") => Some(g + 1),
                other => other,
            };
            if let Some(g) = bumped {
                metadata(&mut object).insert("generation".into(), json!(g));
            }
            for field in ["uid", "creationTimestamp", "name", "namespace"] {
                if let Some(v) = old["metadata"].get(field) {
                    metadata(&mut object).insert(field.into(), v.clone());
                }
            }
        }
        self.write(key, object, "MODIFIED")
    }

    /// Removes an object, logging it `DELETED` at a new resourceVersion.
    pub(super) fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        if let Some(uid) = object["metadata"]["uid"].as_str() {
            self.uids.remove(uid);
        }
        self.rv += 1;
        metadata(&mut object).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.log_event(key, "DELETED", object.clone());
        Some(object)
    }

    fn write(&mut self, key: Key, mut object: Value, kind: &'static str) -> Value {
        self.rv += 1;
        metadata(&mut object).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.log_event(&key, kind, object.clone());
        self.objects.insert(key, object.clone());
        object
    }

    fn log_event(&mut self, key: &Key, kind: &'static str, object: Value) {
        let event = Arc::new(Event {
            rv: self.rv,
            kind,
            resource: key.0.clone(),
            namespace: key.1.clone(),
            object,
        });
        if self.log.len() >= LOG_CAPACITY
            && let Some(old) = self.log.pop_front()
        {
            self.floor = old.rv;
        }
        self.log.push_back(Arc::clone(&event));
        // No receiver is fine: nobody watches.
        let _ = self.feed.send(Feed::Event(event));
    }
}

/// `metadata` of `object`, made an empty map when missing.
pub(super) fn metadata(object: &mut Value) -> &mut Map<String, Value> {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    match object.get_mut("metadata") {
        Some(Value::Object(map)) => map,
        _ => unreachable!("metadata was just made a map"),
    }
}

/// Now as the API server writes times (RFC 3339, seconds, UTC).
pub(super) fn timestamp() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `n` as `len` characters of the alphabet the API server uses in generated names (no
/// vowels, no look-alikes), scrambled so neighbours differ everywhere.
pub(super) fn suffix(n: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (n >> 7);
    (0..len)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

fn uid(n: u64) -> String {
    format!("6b1a0f3c-{:04x}-4000-8000-{n:012x}", n % 0xffff)
}
