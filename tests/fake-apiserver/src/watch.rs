//! WATCH: a chunked HTTP response of newline-delimited JSON events.
//!
//! Each watch reads the store's history from its own cursor (the
//! resourceVersion it has sent up to), so a slow client never blocks writers or
//! other watches; it is woken by a signal after every write.

use crate::encode::{self, View};
use crate::http::{ApiError, Body, Query, bytes_response, error, parse_rv};
use crate::resources::RESOURCES;
use crate::selector::ObjectFilter;
use crate::store::{Event, EventType, MAX_WATCH_LAG, Store, set_resource_version};
use crate::{Counters, Inner};
use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use hyper::body::Frame;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch as signal;
use tokio::time::{Instant, sleep_until};

/// Events read from the history per lock acquisition.
const BATCH: usize = 1024;
/// Flush a chunk once it holds this many bytes.
const CHUNK_BYTES: usize = 64 * 1024;
/// The apiserver's default when `timeoutSeconds` is absent (`--min-request-timeout`).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Start a watch: validate the parameters, pick the starting point under the
/// store lock, and answer with the event stream.
pub(crate) fn start(
    inner: Arc<Inner>,
    resource: usize,
    filter: ObjectFilter,
    q: &Query,
    view: View,
) -> Result<Response<Body>, ApiError> {
    Counters::bump(&inner.stats.watches);
    let rv = q.resource_version.as_deref().filter(|s| !s.is_empty());
    let rv_match = q
        .resource_version_match
        .as_deref()
        .filter(|s| !s.is_empty());
    let mut pending = VecDeque::new();

    let mut store = inner.lock();
    let cursor = match q.send_initial_events {
        Some(true) => {
            if rv_match != Some("NotOlderThan") {
                return Err(error(
                    400,
                    "BadRequest",
                    "sendInitialEvents requires resourceVersionMatch=NotOlderThan",
                ));
            }
            if !q.allow_watch_bookmarks {
                return Err(error(
                    400,
                    "BadRequest",
                    "sendInitialEvents requires allowWatchBookmarks=true",
                ));
            }
            if let Some(rv) = rv.map(parse_rv).transpose()?
                && rv > store.rv
            {
                // A real server waits a few seconds for the cache to catch up first.
                return Err(error(
                    504,
                    "Timeout",
                    &format!("Too large resource version: {rv}"),
                ));
            }
            initial_events(&store, resource, &filter, &mut pending);
            let end = encode::bookmark(&RESOURCES[resource], view, store.rv, true);
            pending.push_back(Out::Bookmark(end));
            store.rv
        }
        send_initial => {
            if rv_match.is_some() && send_initial.is_none() {
                return Err(error(
                    400,
                    "BadRequest",
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                ));
            }
            match rv {
                // Legacy semantics: no (or "0") resourceVersion means "send the
                // current state as ADDED events, then changes".
                None | Some("0") if send_initial.is_none() => {
                    initial_events(&store, resource, &filter, &mut pending);
                    store.rv
                }
                None | Some("0") => store.rv,
                Some(rv) => match parse_rv(rv)? {
                    rv if store.is_available(rv) => rv,
                    rv => {
                        Counters::bump(&inner.stats.gone);
                        let status = encode::status(
                            410,
                            "Expired",
                            &format!("too old resource version: {rv} ({})", store.compacted_rv),
                            None,
                        );
                        let mut line = Vec::new();
                        encode::event_line(&mut line, "ERROR", &status, View::Full);
                        return Ok(bytes_response(200, line));
                    }
                },
            }
        }
    };
    let id = store.register_watch(cursor);
    // Subscribing under the lock: every later write will wake this watch.
    let changes = inner.changes.subscribe();
    let drops = inner.drops.subscribe();
    drop(store);

    inner.stats.open_watches.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    let timeout = q
        .timeout_seconds
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let watch = Watch {
        next_bookmark: now + inner.bookmark_interval(),
        inner,
        id,
        resource,
        filter,
        view,
        bookmarks: q.allow_watch_bookmarks,
        cursor,
        behind: true,
        pending,
        deadline: now + timeout,
        changes,
        drops,
        finished: false,
    };
    let body = StreamBody::new(stream::unfold(watch, Watch::next_frame)).boxed_unsync();
    let mut response = Response::new(body);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Queue an ADDED event for every current object that matches.
fn initial_events(
    store: &Store,
    resource: usize,
    filter: &ObjectFilter,
    pending: &mut VecDeque<Out>,
) {
    for (key, obj) in &store.objects[resource] {
        if filter.key_matches(key) && filter.matches(obj) {
            pending.push_back(Out::Event(EventType::Added, obj.clone()));
        }
    }
}

/// One line waiting to be sent.
enum Out {
    Event(EventType, Arc<Value>),
    Bookmark(Value),
}

enum Wake {
    Dropped,
    TimedOut,
    Changed,
    ServerGone,
    Bookmark,
}

struct Watch {
    inner: Arc<Inner>,
    id: u64,
    resource: usize,
    filter: ObjectFilter,
    view: View,
    bookmarks: bool,
    /// Every event up to this resourceVersion has been considered.
    cursor: u64,
    /// The history may hold events after `cursor`: read before waiting.
    behind: bool,
    pending: VecDeque<Out>,
    deadline: Instant,
    next_bookmark: Instant,
    changes: signal::Receiver<()>,
    drops: signal::Receiver<()>,
    finished: bool,
}

type Item = Result<Frame<Bytes>, std::io::Error>;

impl Watch {
    async fn next_frame(mut self) -> Option<(Item, Self)> {
        loop {
            if self.drops.has_changed().unwrap_or(false) {
                return Some((Err(self.dropped()), self));
            }
            if !self.pending.is_empty() {
                let chunk = self.encode_pending();
                return Some((Ok(Frame::data(chunk)), self));
            }
            if self.finished {
                return None;
            }
            if self.behind {
                self.read_history();
                continue;
            }
            let (deadline, bookmark_at) = (self.deadline, self.next_bookmark);
            let wake = tokio::select! {
                biased;
                _ = self.drops.changed() => Wake::Dropped,
                _ = sleep_until(deadline) => Wake::TimedOut,
                changed = self.changes.changed() => match changed {
                    Ok(()) => Wake::Changed,
                    Err(_) => Wake::ServerGone,
                },
                _ = sleep_until(bookmark_at), if self.bookmarks => Wake::Bookmark,
            };
            match wake {
                Wake::Dropped => return Some((Err(self.dropped()), self)),
                Wake::TimedOut | Wake::ServerGone => return None,
                Wake::Changed => self.behind = true,
                Wake::Bookmark => {
                    self.read_history();
                    if !self.behind && !self.finished {
                        let bookmark = encode::bookmark(
                            &RESOURCES[self.resource],
                            self.view,
                            self.cursor,
                            false,
                        );
                        self.pending.push_back(Out::Bookmark(bookmark));
                    }
                    self.next_bookmark = Instant::now() + self.inner.bookmark_interval();
                }
            }
        }
    }

    /// End abruptly: an error from the body makes hyper close the connection
    /// without the terminating chunk.
    fn dropped(&mut self) -> std::io::Error {
        self.drops.mark_unchanged();
        self.finished = true;
        self.pending.clear();
        std::io::Error::other("watch dropped by the fake apiserver")
    }

    /// Move the cursor forward through the history, queueing matching events.
    fn read_history(&mut self) {
        let mut store = self.inner.lock();
        if !store.installed[self.resource] {
            self.finished = true;
            return;
        }
        if store.rv.saturating_sub(self.cursor) > MAX_WATCH_LAG
            || !store.has_events_after(self.cursor)
        {
            // Too slow: end the stream; the client resumes from its last resourceVersion.
            self.finished = true;
            return;
        }
        let (events, more) = store.events_after(self.cursor, BATCH);
        let latest = store.rv;
        self.cursor = match (more, events.last()) {
            (true, Some(last)) => last.rv,
            _ => self.cursor.max(latest),
        };
        store.advance_watch(self.id, self.cursor);
        drop(store);
        self.behind = more;
        for event in events {
            if let Some(out) = self.filter_event(&event) {
                self.pending.push_back(out);
            }
        }
    }

    /// What this watch sees of one write, as the apiserver's watch cache decides:
    /// an object moving into the selection is ADDED, one moving out is DELETED.
    fn filter_event(&self, event: &Event) -> Option<Out> {
        if event.resource != self.resource || !self.filter.key_matches(&event.key) {
            return None;
        }
        let now_matches = event.kind != EventType::Deleted && self.filter.matches(&event.object);
        let before_matched = event.prev.as_ref().is_some_and(|p| self.filter.matches(p));
        match (now_matches, before_matched) {
            (true, false) => Some(Out::Event(EventType::Added, event.object.clone())),
            (true, true) => Some(Out::Event(EventType::Modified, event.object.clone())),
            (false, true) if event.kind == EventType::Deleted => {
                Some(Out::Event(EventType::Deleted, event.object.clone()))
            }
            (false, true) => {
                // The last state that matched, at the event's resourceVersion.
                let mut last = (**event.prev.as_ref().expect("matched before")).clone();
                set_resource_version(&mut last, event.rv);
                Some(Out::Event(EventType::Deleted, Arc::new(last)))
            }
            (false, false) => None,
        }
    }

    fn encode_pending(&mut self) -> Bytes {
        let mut chunk = Vec::with_capacity(4096);
        while chunk.len() < CHUNK_BYTES
            && let Some(out) = self.pending.pop_front()
        {
            match out {
                Out::Event(kind, obj) => {
                    encode::event_line(&mut chunk, kind.as_str(), &obj, self.view)
                }
                Out::Bookmark(obj) => encode::event_line(&mut chunk, "BOOKMARK", &obj, View::Full),
            }
        }
        Bytes::from(chunk)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.inner.lock().unregister_watch(self.id);
        self.inner
            .stats
            .open_watches
            .fetch_sub(1, Ordering::Relaxed);
    }
}
