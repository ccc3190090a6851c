//! Deletion and owner-reference garbage collection: `Foreground` (the owner waits, marked,
//! until its dependents are gone), `Background` (the owner goes at once, its dependents
//! after), `Orphan` (the dependents stay, without the owner reference).

use serde_json::{Value, json};

use crate::kubernetes::State;
use crate::kubernetes::store::{Key, metadata, timestamp};

/// How a delete treats the object's dependents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Propagation {
    /// Dependents first, then the object.
    Foreground,
    /// The object now, dependents after.
    Background,
    /// The object now, dependents kept.
    Orphan,
}

impl Propagation {
    /// `Foreground`, `Background` or `Orphan`.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "Foreground" => Some(Self::Foreground),
            "Background" => Some(Self::Background),
            "Orphan" => Some(Self::Orphan),
            _ => None,
        }
    }
}

const FOREGROUND: &str = "foregroundDeletion";

/// Deletes `key` as `policy` says; returns the object when it stays (marked for deletion
/// until its dependents are gone).
pub(in crate::kubernetes) fn delete(
    state: &mut State,
    key: &Key,
    policy: Propagation,
) -> Option<Value> {
    let object = state.store.get(key)?.clone();
    let uid = object["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    state.controllers.gc_due = true;
    match policy {
        Propagation::Foreground => {
            if object["metadata"].get("deletionTimestamp").is_some() {
                return Some(object);
            }
            let mut marked = object;
            let meta = metadata(&mut marked);
            meta.insert("deletionTimestamp".into(), json!(timestamp()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            let finalizers = meta.entry("finalizers").or_insert_with(|| json!([]));
            if let Some(list) = finalizers.as_array_mut() {
                list.push(json!(FOREGROUND));
            }
            Some(state.store.replace(key.clone(), marked))
        }
        Propagation::Background => {
            remove(state, key);
            None
        }
        Propagation::Orphan => {
            for dependent in dependents(state, &uid) {
                if let Some(mut object) = state.store.get(&dependent).cloned()
                    && let Some(refs) = object["metadata"]["ownerReferences"].as_array_mut()
                {
                    refs.retain(|r| r["uid"] != uid.as_str());
                    state.store.replace(dependent, object);
                }
            }
            remove(state, key);
            None
        }
    }
}

fn remove(state: &mut State, key: &Key) {
    state.store.remove(key);
    state.managers.remove(key);
    state.controllers.runs.remove(key);
    state.controllers.jobs.remove(key);
}

/// The keys of the objects that name `uid` as an owner.
fn dependents(state: &State, uid: &str) -> Vec<Key> {
    state
        .store
        .all_keys()
        .into_iter()
        .filter(|k| state.store.get(k).is_some_and(|o| super::owned_by(o, uid)))
        .collect()
}

/// Collects garbage until nothing changes: objects whose owners are all gone go, and an
/// object marked for foreground deletion goes once its dependents are gone (they are
/// deleted in the foreground too).
pub(super) fn collect(state: &mut State) {
    if !state.controllers.gc_due {
        return;
    }
    state.controllers.gc_due = false;
    loop {
        let mut changed = false;
        for key in state.store.all_keys() {
            let Some(object) = state.store.get(&key).cloned() else {
                continue;
            };
            let meta = &object["metadata"];
            let foreground = meta["finalizers"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == FOREGROUND));
            if foreground {
                let uid = meta["uid"].as_str().unwrap_or_default();
                let waiting = dependents(state, uid);
                if waiting.is_empty() {
                    remove(state, &key);
                    changed = true;
                }
                for dependent in waiting {
                    let marked = state
                        .store
                        .get(&dependent)
                        .is_some_and(|d| d["metadata"].get("deletionTimestamp").is_some());
                    if !marked {
                        delete(state, &dependent, Propagation::Foreground);
                        changed = true;
                    }
                }
                continue;
            }
            let owners = meta["ownerReferences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let orphaned = !owners.is_empty()
                && owners.iter().all(|r| {
                    r["uid"]
                        .as_str()
                        .is_none_or(|uid| state.store.by_uid(uid).is_none())
                });
            if orphaned {
                remove(state, &key);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // Dependents may still be on their way: look again next tick.
    state.controllers.gc_due = state.store.all_keys().iter().any(|k| {
        state
            .store
            .get(k)
            .is_some_and(|o| o["metadata"].get("deletionTimestamp").is_some())
    });
}
