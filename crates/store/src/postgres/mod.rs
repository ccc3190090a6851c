//! The PostgreSQL store: shared by any number of `baton serve` replicas.
//!
//! Every write is one transaction on a pooled connection, except webhook deliveries: the
//! intake stores those in groups, one statement a group (`intake`).
//! Work is claimed, never assigned: a task, a delivery, an outbox row or a relay message is
//! taken with `FOR UPDATE SKIP LOCKED` under a lease that expires, and every claim carries a
//! token the claimant's later writes check, so a replica paused past its lease writes
//! nothing over the one that took the work ([`Change::Fence`]). Replicas wake each other
//! with `NOTIFY` on [`CHANNEL`] when they hand work over.
//!
//! The parts: `tls` (rustls for tokio-postgres), `schema` (migrations under an advisory
//! lock), `listen` (the `LISTEN` connection behind [`Store::wakes`]), `intake` (deliveries
//! stored in groups), `deliveries` (claims of deliveries, and the feed in this process's
//! order), `commit` (one [`Change`] as SQL), `queries` (the [`Store`] trait), `outbox` and
//! `relay` (the report outbox's and the relay queue's tables). This file opens a store and maps the driver's errors.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Transaction};

use crate::*;

mod commit;
mod deliveries;
mod intake;
mod listen;
#[allow(clippy::unused_async)] // Until the outbox's queries fill its seams.
mod outbox;
mod queries;
#[allow(clippy::unused_async)] // Until the relay queue's queries fill its seams.
mod relay;
pub(crate) mod schema;
mod tls;

#[cfg(test)]
mod tests;

/// The channel replicas `NOTIFY` each other on, followed by `:` and the schema's name
/// (notifications are per database, and stores in other schemas are not replicas of this
/// one); the payload is a [`Work`] name.
pub(super) const CHANNEL: &str = "baton_work";

/// Connections kept per process. Each one is a PostgreSQL backend process on the server, so
/// the pool is small: deliveries, the busiest writes, take one connection for the intake's
/// writer; the rest serve the engine's commits and claims and the API's reads.
const POOL_SIZE: usize = 16;

/// How long opening a connection, or waiting for a free one, may take before the database
/// counts as unavailable: long enough for a busy server, short enough that a webhook sender
/// gets its 503 before its own timeout (GitHub's is 10 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long readiness's `SELECT 1` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long readiness trusts a probe's outcome: `/readyz` is asked about once a second.
const PROBE_TTL: Duration = Duration::from_secs(1);

/// A claim's length when the options name none: long enough that a busy replica renews it
/// well before it ends, short enough that another takes the work soon after a crash.
const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The PostgreSQL store.
pub struct PostgresStore {
    /// Connections.
    pool: Pool,
    /// Relay messages this process holds, with their claims' tokens (see `relay`).
    relay_leases: relay::Leases,
    /// Deliveries: ids in flight, the ones held, and the feed.
    deliveries: Arc<deliveries::Deliveries>,
    /// Where deliveries queue to be stored.
    intake: intake::Queue,
    /// The outcome of readiness's last probe, and when.
    probe: Mutex<Option<(Instant, Option<String>)>>,
    /// How long a claim lasts.
    lease: Duration,
    /// The wakes of [`Store::wakes`], fed by the `LISTEN` connection.
    wakes: Arc<listen::Wakes>,
    /// Stops the `LISTEN` connection's task with the store.
    listener: tokio::task::AbortHandle,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

/// A parsed store URL: the driver's configuration and the TLS to use with it.
struct Target {
    config: tokio_postgres::Config,
    tls: tls::MakeRustls,
}

/// Parses `options`' URL. `sslmode` and `sslrootcert` are taken out and handled here,
/// since the driver knows only `disable`, `prefer` and `require`; the rest is the driver's.
/// Reads the root certificates, so it runs off the async threads.
fn target(options: &StoreOptions) -> Result<Target> {
    let url = &options.url;
    let bad = |why: String| StoreError::Url(format!("store url `{}`: {why}", redact_url(url)));
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (mut mode, mut root_file) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("sslmode", value) => mode = Some(value.to_owned()),
            ("sslrootcert", value) => root_file = Some(value.to_owned()),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| bad(e.to_string()))?;
    let (ssl, check) = match mode.as_deref().unwrap_or("prefer") {
        "disable" => (
            tokio_postgres::config::SslMode::Disable,
            tls::Check::Nothing,
        ),
        "prefer" => (tokio_postgres::config::SslMode::Prefer, tls::Check::Nothing),
        "require" if root_file.is_some() => {
            (tokio_postgres::config::SslMode::Require, tls::Check::Chain)
        }
        "require" => (
            tokio_postgres::config::SslMode::Require,
            tls::Check::Nothing,
        ),
        "verify-ca" => (tokio_postgres::config::SslMode::Require, tls::Check::Chain),
        "verify-full" => (tokio_postgres::config::SslMode::Require, tls::Check::Full),
        other => {
            return Err(bad(format!(
                "sslmode `{other}`: expected disable, prefer, require, verify-ca or verify-full"
            )));
        }
    };
    config.ssl_mode(ssl);
    if config.get_password().is_none()
        && let Some(password) = &options.password
    {
        config.password(password.as_str());
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    // A database that vanishes without closing its connections (a partition, a killed VM)
    // is noticed by keepalives on an idle connection, and by the unacknowledged-data limit
    // on a busy one, rather than by the kernel's minutes of retransmissions.
    config.keepalives_idle(Duration::from_secs(10));
    config.tcp_user_timeout(Duration::from_secs(10));
    if config.get_application_name().is_none() {
        config.application_name("baton");
    }
    let tls = if ssl == tokio_postgres::config::SslMode::Disable {
        tls::MakeRustls::new(tls::client_config(tls::Check::Nothing, None)?)
    } else {
        tls::MakeRustls::new(tls::client_config(check, root_file.as_deref())?)
    };
    Ok(Target { config, tls })
}

impl PostgresStore {
    /// Connects, takes the migration lock and brings the schema up to date.
    pub async fn open(options: &StoreOptions) -> Result<Self> {
        let owned = options.clone();
        let target = tokio::task::spawn_blocking(move || target(&owned))
            .await
            .map_err(|source| StoreError::Task {
                what: "open",
                source,
            })??;
        let manager = Manager::from_config(
            target.config.clone(),
            target.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Url(format!("PostgreSQL pool: {e}")))?;
        {
            let mut client = get(&pool).await?;
            schema::migrate(&mut client).await?;
        }
        let (own, taken) = {
            let client = get(&pool).await?;
            let row = client
                .query_one(
                    "SELECT nextval('lease_tokens'), nextval('lease_tokens')",
                    &[],
                )
                .await
                .map_err(pg_error)?;
            (
                row.try_get::<_, i64>(0).map_err(pg_error)?,
                row.try_get::<_, i64>(1).map_err(pg_error)?,
            )
        };
        let lease = options.lease.unwrap_or(DEFAULT_LEASE);
        let deliveries = Arc::new(deliveries::Deliveries::new(own, taken));
        let intake = intake::Queue::start(
            pool.clone(),
            deliveries.clone(),
            lease.as_millis() as Millis,
        );
        let wakes = Arc::new(listen::Wakes::default());
        let listener =
            tokio::spawn(listen::run(target.config, target.tls, wakes.clone())).abort_handle();
        Ok(Self {
            pool,
            relay_leases: relay::Leases::default(),
            deliveries,
            intake,
            probe: Mutex::new(None),
            lease,
            wakes,
            listener,
        })
    }

    /// [`PostgresStore::open`] as the trait object [`open_with`] returns.
    pub(crate) async fn open_shared(options: &StoreOptions) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(Self::open(options).await?))
    }

    /// A pooled connection.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object> {
        get(&self.pool).await
    }

    /// How long a claim lasts, in [`Millis`].
    fn lease_millis(&self) -> Millis {
        self.lease.as_millis() as Millis
    }
}

/// A connection from `pool`; a database that cannot be reached in time is
/// [`StoreError::Unavailable`].
async fn get(pool: &Pool) -> Result<deadpool_postgres::Object> {
    use deadpool_postgres::PoolError;
    pool.get().await.map_err(|e| match e {
        PoolError::Backend(e) => pg_error(e),
        other => StoreError::Unavailable {
            detail: other.to_string(),
        },
    })
}

/// The store's error for a driver error: connection trouble is
/// [`StoreError::Unavailable`]; the rest [`StoreError::Postgres`]. The driver's messages
/// carry no password.
pub(super) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    use tokio_postgres::error::SqlState;
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        let unavailable = code.code().starts_with("08")
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::READ_ONLY_SQL_TRANSACTION,
            ]
            .contains(code);
        if unavailable {
            return StoreError::Unavailable {
                detail: e.to_string(),
            };
        }
        return StoreError::Postgres(e);
    }
    // A certificate that is refused is a setting to fix, not an outage to wait out.
    let io = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>());
    if io
        .and_then(std::io::Error::get_ref)
        .is_some_and(|inner| inner.is::<rustls::Error>())
    {
        return StoreError::Postgres(e);
    }
    // No answer from the server: the connection failed, closed or timed out.
    if e.is_closed() || io.is_some() || e.code().is_none() && e.to_string().contains("connect") {
        return StoreError::Unavailable {
            detail: e.to_string(),
        };
    }
    StoreError::Postgres(e)
}

/// Tells the other replicas, when the transaction commits, that `work` is waiting.
pub(super) async fn notify(tx: &Transaction<'_>, work: Work) -> Result<()> {
    let statement = tx
        .prepare_cached("SELECT pg_notify($1 || ':' || current_schema(), $2)")
        .await
        .map_err(pg_error)?;
    tx.execute(&statement, &[&CHANNEL, &work.as_str()])
        .await
        .map_err(pg_error)?;
    Ok(())
}
