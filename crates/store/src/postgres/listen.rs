//! The `LISTEN` connection behind [`Store::wakes`]: one per store, on its own task, that
//! counts each [`Work`] notification into a `watch` channel, and reconnects with backoff
//! while the database is away. A reconnect wakes every channel, since notifications sent
//! while it was away are lost.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;

use super::{CHANNEL, tls};
use crate::*;

/// The first pause before reconnecting; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest pause before reconnecting: a database that comes back is heard within it.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A counter per [`Work`].
#[derive(Debug)]
pub(super) struct Wakes {
    tasks: watch::Sender<u64>,
    deliveries: watch::Sender<u64>,
    reports: watch::Sender<u64>,
    relays: watch::Sender<u64>,
}

impl Default for Wakes {
    fn default() -> Self {
        Self {
            tasks: watch::Sender::new(0),
            deliveries: watch::Sender::new(0),
            reports: watch::Sender::new(0),
            relays: watch::Sender::new(0),
        }
    }
}

impl Wakes {
    fn sender(&self, work: Work) -> &watch::Sender<u64> {
        match work {
            Work::Tasks => &self.tasks,
            Work::Deliveries => &self.deliveries,
            Work::Reports => &self.reports,
            Work::Relays => &self.relays,
        }
    }

    /// A receiver of `work`'s wakes.
    pub(super) fn subscribe(&self, work: Work) -> watch::Receiver<u64> {
        self.sender(work).subscribe()
    }

    fn wake(&self, work: Work) {
        self.sender(work).send_modify(|n| *n += 1);
    }

    fn wake_all(&self) {
        for work in [Work::Tasks, Work::Deliveries, Work::Reports, Work::Relays] {
            self.wake(work);
        }
    }
}

/// The [`Work`] a payload names.
fn parse(payload: &str) -> Option<Work> {
    [Work::Tasks, Work::Deliveries, Work::Reports, Work::Relays]
        .into_iter()
        .find(|w| w.as_str() == payload)
}

/// Listens until the task is aborted (the store is dropped).
pub(super) async fn run(config: tokio_postgres::Config, tls: tls::MakeRustls, wakes: Arc<Wakes>) {
    let mut backoff = FIRST_BACKOFF;
    let mut first = true;
    loop {
        if listen_once(&config, &tls, &wakes, &mut backoff, first).await {
            first = false;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life; true if it got as far as listening.
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &tls::MakeRustls,
    wakes: &Wakes,
    backoff: &mut Duration,
    first: bool,
) -> bool {
    let Ok((client, mut connection)) = config.connect(tls.clone()).await else {
        return false;
    };
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message
                && sender.send(n).is_err()
            {
                break;
            }
        }
    });
    let listening = async {
        let schema: String = client
            .query_one("SELECT current_schema()", &[])
            .await?
            .try_get(0)?;
        let channel = format!("{CHANNEL}:{schema}").replace('"', "\"\"");
        client.batch_execute(&format!("LISTEN \"{channel}\"")).await
    };
    if listening.await.is_err() {
        driver.abort();
        return false;
    }
    *backoff = FIRST_BACKOFF;
    if !first {
        wakes.wake_all();
    }
    while let Some(notification) = received.recv().await {
        if let Some(work) = parse(notification.payload()) {
            wakes.wake(work);
        }
    }
    drop(client);
    true
}
