//! Connections reused without sqlx's release ping.
//!
//! sqlx 0.8 pings every connection that goes back to its pool (a `Sync` and
//! its `ReadyForQuery` on PostgreSQL, a message to the worker thread and back
//! on SQLite), from a task it spawns, because a statement's future dropped
//! half-way may have left the connection mid-answer. For a statement that ran
//! to its end the ping finds nothing: it is a second round trip to the
//! database for every query, and measured the dearest part of an uncached
//! request after the query itself (docs/PERFORMANCE.md, "The release ping").
//!
//! [`Connections`] keeps, beside the pool, the connections whose last
//! statement finished ([`Checkout::done`]) and hands them out again, most
//! recently used first, without asking the pool. Everything else takes sqlx's
//! way back: a checkout dropped without `done` (a statement that failed, timed
//! out or was cancelled) returns its connection to the pool, which pings it
//! and closes it if it is broken.
//!
//! Invariants:
//! - Every use of the pool takes a checkout here, and a checkout holds one of
//!   `max_connections` permits. So connections out of the pool (in use or
//!   kept here) plus checkouts still waiting for one never exceed the pool's
//!   size, and a checkout that finds none kept here gets one from the pool
//!   without waiting for a kept one (which the pool could not see).
//! - A connection kept at least `ping_idle_after` is pinged before it is
//!   used again (the pool's own rule for its idle connections); one the
//!   database closed meanwhile is closed and another taken.
//! - A connection is kept at most [`KEEP_AT_MOST`] after it left the pool,
//!   and one idle that long is given back by a sweep: the pool's lifetime
//!   and idle limits still apply, at most that much later.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Connection, Database, Pool};
use tokio::sync::{Semaphore, SemaphorePermit};

/// How long a connection may stay out of the pool, and stay idle here,
/// before it goes back.
pub(super) const KEEP_AT_MOST: Duration = Duration::from_secs(30);

struct Kept<DB: Database> {
    connection: PoolConnection<DB>,
    /// When it left the pool.
    out_since: Instant,
    /// When its last statement finished.
    idle_since: Instant,
}

struct Shared<DB: Database> {
    /// Most recently used last.
    kept: Mutex<VecDeque<Kept<DB>>>,
    permits: Semaphore,
}

impl<DB: Database> Shared<DB> {
    fn kept(&self) -> MutexGuard<'_, VecDeque<Kept<DB>>> {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Gives back to the pool the connections kept idle at least
    /// [`KEEP_AT_MOST`] (the oldest are at the front).
    fn sweep(&self, now: Instant) -> usize {
        let mut kept = self.kept();
        let stale = kept
            .iter()
            .take_while(|k| now.duration_since(k.idle_since) >= KEEP_AT_MOST)
            .count();
        let gone: Vec<Kept<DB>> = kept.drain(..stale).collect();
        drop(kept);
        // Dropped outside the lock: each returns to the pool (pinged there).
        gone.len()
    }
}

impl<DB: Database> Drop for Shared<DB> {
    fn drop(&mut self) {
        // A connection dropped goes back to its pool from a task sqlx
        // spawns, which needs a runtime; without one (the store outlived
        // it), the connections are closed here instead, without a task.
        if tokio::runtime::Handle::try_current().is_err() {
            for kept in self.kept().drain(..) {
                drop(kept.connection.detach());
            }
        }
    }
}

/// The store's pool, and the connections kept out of it between statements.
pub(super) struct Connections<DB: Database> {
    pool: Pool<DB>,
    shared: Arc<Shared<DB>>,
    acquire_timeout: Duration,
    ping_idle_after: Duration,
}

impl<DB: Database> Clone for Connections<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            shared: self.shared.clone(),
            acquire_timeout: self.acquire_timeout,
            ping_idle_after: self.ping_idle_after,
        }
    }
}

impl<DB: Database> Connections<DB> {
    /// Connections over `pool`, at most `max` at once. Starts the sweep,
    /// which ends when the last clone goes.
    pub(super) fn new(
        pool: Pool<DB>,
        max: u32,
        acquire_timeout: Duration,
        ping_idle_after: Duration,
    ) -> Self {
        let shared = Arc::new(Shared {
            kept: Mutex::new(VecDeque::new()),
            permits: Semaphore::new(usize::try_from(max).unwrap_or(usize::MAX)),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&shared)));
        }
        Self {
            pool,
            shared,
            acquire_timeout,
            ping_idle_after,
        }
    }

    /// `(size, idle)`: connections open, and those not in a statement (idle
    /// in the pool or kept here).
    pub(super) fn counts(&self) -> (u32, usize) {
        let kept = self.shared.kept().len();
        (self.pool.size(), self.pool.num_idle() + kept)
    }

    /// A connection: the one kept here that finished last, else one from the
    /// pool, within the acquire timeout.
    ///
    /// # Errors
    /// `PoolTimedOut` when no permit came within the acquire timeout, or the
    /// pool's error.
    pub(super) async fn take(&self) -> Result<Checkout<'_, DB>, sqlx::Error> {
        let permit = tokio::time::timeout(self.acquire_timeout, self.shared.permits.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        loop {
            let Some(mut kept) = self.shared.kept().pop_back() else {
                break;
            };
            if kept.idle_since.elapsed() >= self.ping_idle_after
                && kept.connection.ping().await.is_err()
            {
                // Closed by the database meanwhile: close it here too.
                kept.connection.close_on_drop();
                continue;
            }
            return Ok(Checkout {
                connection: Some(kept.connection),
                out_since: kept.out_since,
                shared: &self.shared,
                _permit: permit,
            });
        }
        let connection = self.pool.acquire().await?;
        Ok(Checkout {
            connection: Some(connection),
            out_since: Instant::now(),
            shared: &self.shared,
            _permit: permit,
        })
    }
}

async fn sweep<DB: Database>(shared: Weak<Shared<DB>>) {
    let mut every = tokio::time::interval(KEEP_AT_MOST / 2);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let given_back = shared.sweep(Instant::now());
        if given_back > 0 {
            tracing::debug!(given_back, "idle store connections returned to the pool");
        }
    }
}

/// A connection for one statement (or one transaction). Dropped without
/// [`Checkout::done`], it goes back to the pool the way sqlx returns any
/// connection: pinged, and closed if that fails.
pub(super) struct Checkout<'a, DB: Database> {
    connection: Option<PoolConnection<DB>>,
    out_since: Instant,
    shared: &'a Shared<DB>,
    _permit: SemaphorePermit<'a>,
}

impl<DB: Database> Checkout<'_, DB> {
    /// The statement ran to its end: the connection is ready for the next
    /// one and is kept for it, unless it has been out of the pool
    /// [`KEEP_AT_MOST`] already.
    pub(super) fn done(mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        let now = Instant::now();
        if now.duration_since(self.out_since) >= KEEP_AT_MOST {
            return;
        }
        self.shared.kept().push_back(Kept {
            connection,
            out_since: self.out_since,
            idle_since: now,
        });
        // The permit is released after the connection is kept, so the next
        // checkout finds it.
    }
}

impl<DB: Database> Deref for Checkout<'_, DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &Self::Target {
        // Only `done` takes the connection, and it consumes the checkout.
        self.connection
            .as_deref()
            .unwrap_or_else(|| unreachable!("a checkout holds its connection until done"))
    }
}

impl<DB: Database> DerefMut for Checkout<'_, DB> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.connection
            .as_deref_mut()
            .unwrap_or_else(|| unreachable!("a checkout holds its connection until done"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::str::FromStr;

    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    use sqlx::{Executor, Sqlite};

    use super::*;

    /// Connections over an in-memory SQLite pool of `max` connections (the
    /// pool's connections share one database).
    async fn connections(max: u32, ping_idle_after: Duration) -> Connections<Sqlite> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:").unwrap();
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(1))
            .connect_with(options)
            .await
            .unwrap();
        Connections::new(pool, max, Duration::from_secs(1), ping_idle_after)
    }

    /// Whether the connection of `checkout` created the temporary table
    /// `marker` (temporary tables belong to one connection).
    async fn has_marker(checkout: &mut Checkout<'_, Sqlite>) -> bool {
        let found: i64 =
            sqlx::query_scalar("SELECT count(*) FROM temp.sqlite_master WHERE name = 'marker'")
                .fetch_one(&mut **checkout)
                .await
                .unwrap();
        found == 1
    }

    /// Creates the temporary table `marker` on a connection, and keeps it.
    async fn mark_a_connection(connections: &Connections<Sqlite>) {
        let mut checkout = connections.take().await.unwrap();
        (&mut *checkout)
            .execute("CREATE TEMP TABLE marker (x)")
            .await
            .unwrap();
        checkout.done();
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        for _ in 0..500 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("{what}: not within 1 s");
    }

    #[tokio::test]
    async fn a_statement_that_finished_keeps_its_connection_out_of_the_pool_for_the_next() {
        let connections = connections(2, Duration::from_secs(60)).await;
        mark_a_connection(&connections).await;
        assert_eq!(connections.shared.kept().len(), 1, "kept here");
        assert_eq!(connections.pool.num_idle(), 0, "not returned to the pool");
        let mut next = connections.take().await.unwrap();
        assert!(has_marker(&mut next).await, "the same connection again");
        assert_eq!(connections.pool.size(), 1, "no second connection opened");
    }

    #[tokio::test]
    async fn a_checkout_dropped_without_done_goes_back_to_the_pool_not_here() {
        let connections = connections(1, Duration::from_secs(60)).await;
        let checkout = connections.take().await.unwrap();
        drop(checkout);
        assert_eq!(connections.shared.kept().len(), 0);
        eventually("returned to the pool", || connections.pool.num_idle() == 1).await;
        // The pool hands it out again: the permit went back with it.
        connections.take().await.unwrap().done();
        assert_eq!(connections.counts(), (1, 1), "one open, idle (kept here)");
    }

    /// Without one permit per connection, a checkout that found nothing kept
    /// would wait on the pool while the others keep every connection here,
    /// invisible to the pool, and time out.
    #[tokio::test]
    async fn more_concurrent_statements_than_connections_all_run() {
        let connections = connections(2, Duration::from_secs(60)).await;
        let tasks: Vec<_> = (0..32)
            .map(|n| {
                let connections = connections.clone();
                tokio::spawn(async move {
                    for _ in 0..20 {
                        let mut checkout = connections.take().await?;
                        let _: i64 = sqlx::query_scalar("SELECT $1")
                            .bind(n)
                            .fetch_one(&mut *checkout)
                            .await?;
                        tokio::task::yield_now().await;
                        checkout.done();
                    }
                    Ok::<_, sqlx::Error>(())
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert!(connections.pool.size() <= 2, "{}", connections.pool.size());
    }

    #[tokio::test]
    async fn a_connection_kept_past_the_ping_window_is_pinged_and_used() {
        let connections = connections(1, Duration::ZERO).await;
        mark_a_connection(&connections).await;
        let mut next = connections.take().await.unwrap();
        assert!(has_marker(&mut next).await, "pinged, found alive, used");
    }

    #[tokio::test]
    async fn connections_idle_past_the_limit_go_back_to_the_pool() {
        let connections = connections(2, Duration::from_secs(60)).await;
        connections.take().await.unwrap().done();
        assert_eq!(connections.shared.sweep(Instant::now()), 0, "still fresh");
        let later = Instant::now() + KEEP_AT_MOST;
        assert_eq!(connections.shared.sweep(later), 1);
        assert_eq!(connections.shared.kept().len(), 0);
        eventually("returned to the pool", || connections.pool.num_idle() == 1).await;
    }

    #[test]
    fn connections_kept_when_the_runtime_is_gone_are_closed_without_a_panic() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let connections = runtime.block_on(async {
            let connections = connections(1, Duration::from_secs(60)).await;
            connections.take().await.unwrap().done();
            connections
        });
        drop(runtime);
        assert_eq!(connections.shared.kept().len(), 1);
        drop(connections);
    }

    #[tokio::test]
    async fn a_connection_out_of_the_pool_past_the_limit_is_not_kept() {
        let connections = connections(1, Duration::from_secs(60)).await;
        let mut checkout = connections.take().await.unwrap();
        checkout.out_since = Instant::now().checked_sub(KEEP_AT_MOST).unwrap();
        checkout.done();
        assert_eq!(connections.shared.kept().len(), 0);
        eventually("returned to the pool", || connections.pool.num_idle() == 1).await;
    }
}
