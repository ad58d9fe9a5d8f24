//! Tracked tasks in a database (`tracking::SqlStore`, features `tracking`
//! and `sqlite`/`postgres`): two servers on one database, as two machines
//! would be — a task started on one is reported by the other, a lock holds
//! across both under 100 concurrent starts, a crashed holder's lock lapses
//! with its lease while a live one's is renewed, the first outcome wins,
//! rows stay bounded by the TTL and the capacity, and an `Idempotency-Key`
//! holds across both servers, living and going with its row.
//!
//! Every scenario runs on SQLite (a file in a temporary directory) and on
//! PostgreSQL when `DATABASE_URL` names a server (each test in a database
//! of its own, `CREATE DATABASE` with a unique name, dropped at the end);
//! without it the PostgreSQL tests say so on one line and pass.
#![cfg(all(feature = "tracking", feature = "sqlite", feature = "postgres"))]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Barrier;
use tower::ServiceExt;
use tower_background::tracking::{
    Admission, Lock, SqlStore, SqlStoreBuilder, TaskId, TaskOutcome, TaskRecord, TaskRegistry,
    TaskSpec, TaskStatus, TaskStore,
};
use tower_background::Supervisor;

// A fresh database per test, shared with `tests/durable.rs`.
mod databases;
use databases::{on_each_engine, Db, Engine};

mod support;
use support::AsyncGate;

/// The longest a test waits for something that comes with time (a lease
/// lapsing, a record expiring, a task ending) before it fails saying which.
const WAIT: Duration = Duration::from_secs(60);

/// How often a test looks again at something that changes with time.
const POLL: Duration = Duration::from_millis(50);

on_each_engine!(
    a_task_started_on_one_server_is_reported_by_the_other,
    a_lock_holds_across_servers,
    a_crashed_holder_loses_its_lock_when_its_lease_lapses,
    a_running_task_keeps_its_lock_past_many_leases,
    the_first_outcome_wins_and_releases_the_lock_once,
    records_round_trip_with_every_outcome,
    ended_records_expire_after_the_ttl,
    past_the_capacity_the_first_ended_goes_and_running_tasks_stay,
    concurrent_starts_never_exceed_the_capacity,
    an_idempotency_key_holds_across_servers,
    idempotency_keys_go_with_their_rows,
    a_cancelled_task_frees_its_idempotency_key,
    a_table_of_an_earlier_version_gets_the_idempotency_columns,
);

// ---------------------------------------------------------------------------
// Scenarios.

/// `POST` on server A, `GET ?task_id=` on server B: B sees the task
/// running, then finished with its result, exactly as A does.
async fn a_task_started_on_one_server_is_reported_by_the_other(db: Db) {
    let gate = AsyncGate::default();
    let a = Server::start(&db, &gate, |store| store).await;
    let b = Server::start(&db, &gate, |store| store).await;

    let started = a.post("/hello-single?name=Me").await;
    assert_eq!(started.status, StatusCode::ACCEPTED);
    let location = started.location();
    let running = b.get(&location).await;
    assert_eq!(running.status, StatusCode::OK);
    assert_eq!(running.json, started.json, "B shows what A answered");
    assert_eq!(running.json["status"], "running");

    gate.open();
    let finished = b.ended(&location).await;
    assert_eq!(finished.json["status"], "finished");
    assert_eq!(finished.json["result"], "Hello Me!");
    assert_eq!(finished.json["task_id"], started.json["task_id"]);
    assert_eq!(finished.json["start_time"], started.json["start_time"]);
    assert_eq!(a.get(&location).await.json, finished.json);

    let unknown = format!("/hello-single?task_id={}", TaskId::new());
    assert_eq!(b.get(&unknown).await.status, StatusCode::NOT_FOUND);
    a.stop().await;
    b.stop().await;
}

/// 100 concurrent `POST`s, every other one on each server: exactly one
/// starts; the 99 others are sent to it. Once it ends, the lock is free on
/// both.
async fn a_lock_holds_across_servers(db: Db) {
    let gate = AsyncGate::default();
    let a = Arc::new(Server::start(&db, &gate, |store| store).await);
    let b = Arc::new(Server::start(&db, &gate, |store| store).await);

    a.warm_up().await;
    b.warm_up().await;
    // All at once: each waits until all 100 are ready to go.
    let ready = Arc::new(Barrier::new(100));
    let posts = (0..100).map(|i| {
        let server = Arc::clone(if i % 2 == 0 { &a } else { &b });
        let ready = Arc::clone(&ready);
        tokio::spawn(async move {
            ready.wait().await;
            server.post("/hello-single?name=Me").await
        })
    });
    let posts: Vec<_> = posts.collect();
    let mut replies = Vec::new();
    for post in posts {
        replies.push(post.await.expect("a POST"));
    }
    let started: Vec<_> = replies
        .iter()
        .filter(|reply| reply.status == StatusCode::ACCEPTED)
        .collect();
    assert_eq!(started.len(), 1, "exactly one start");
    let location = started[0].location();
    for reply in &replies {
        if reply.status != StatusCode::ACCEPTED {
            assert_eq!(reply.status, StatusCode::SEE_OTHER);
            assert_eq!(reply.location(), location, "sent to the one running task");
            assert_eq!(reply.header("x-task-lock"), "signature");
        }
    }

    gate.open();
    a.ended(&location).await;
    let again = b.post("/hello-single?name=Me").await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "the lock was released");
    assert_ne!(again.location(), location);
    for server in [a, b] {
        Arc::into_inner(server)
            .expect("the POSTs are done")
            .stop()
            .await;
    }
}

/// A server registers a task under a lock and dies before it renews its
/// lease (here: a store used without a registry, so nothing renews). Until
/// the lease lapses the lock holds on the other server; then a start takes
/// it, and the dead task shows as failed, abandoned.
async fn a_crashed_holder_loses_its_lock_when_its_lease_lapses(db: Db) {
    let lease = Duration::from_secs(2);
    let crashed_store = db.store(|store| store.lease(lease)).await;
    let gate = AsyncGate::default();
    let b = Server::start(&db, &gate, |store| store.lease(lease)).await;

    let (record, spec) = running_record("hello_task", Lock::Signature, &Hello::me());
    let crashed = record.task_id;
    let admitted = crashed_store.try_start(record, &spec).await.unwrap();
    assert_eq!(admitted, Admission::Started);
    let refused = b.post("/hello-single?name=Me").await;
    assert_eq!(
        refused.status,
        StatusCode::SEE_OTHER,
        "the lease still runs"
    );
    assert_eq!(refused.location(), location_of(crashed));

    let deadline = Instant::now() + WAIT;
    let started = loop {
        let reply = b.post("/hello-single?name=Me").await;
        if reply.status == StatusCode::ACCEPTED {
            break reply;
        }
        assert_eq!(reply.status, StatusCode::SEE_OTHER);
        assert!(
            Instant::now() < deadline,
            "the lapsed lease was never taken over"
        );
        tokio::time::sleep(POLL).await;
    };
    assert_ne!(started.location(), location_of(crashed));

    let abandoned = b.get(&location_of(crashed)).await;
    assert_eq!(abandoned.json["status"], "failed");
    let message = abandoned.json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("stopped renewing its lease"),
        "a clear reason: {message}"
    );
    // A late outcome from the "crashed" server changes nothing.
    let late = TaskOutcome::Finished(json!("too late"));
    crashed_store
        .complete(crashed, late, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(b.get(&location_of(crashed)).await.json, abandoned.json);

    gate.open();
    let finished = b.ended(&started.location()).await;
    assert_eq!(finished.json["result"], "Hello Me!");
    b.stop().await;
}

/// A task that runs for several leases keeps its lock, because its server
/// renews the lease; the other server is sent to it all along.
async fn a_running_task_keeps_its_lock_past_many_leases(db: Db) {
    let lease = Duration::from_secs(2);
    let gate = AsyncGate::default();
    let a = Server::start(&db, &gate, |store| store.lease(lease)).await;
    let b = Server::start(&db, &gate, |store| store.lease(lease)).await;

    let started = a.post("/hello-single?name=Me").await;
    assert_eq!(started.status, StatusCode::ACCEPTED);
    let location = started.location();
    let until = Instant::now() + lease * 3;
    while Instant::now() < until {
        let refused = b.post("/hello-single?name=Me").await;
        assert_eq!(
            refused.status,
            StatusCode::SEE_OTHER,
            "the lease was renewed"
        );
        assert_eq!(refused.location(), location);
        assert_eq!(b.get(&location).await.json["status"], "running");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    gate.open();
    let finished = b.ended(&location).await;
    assert_eq!(finished.json["status"], "finished");
    assert_eq!(finished.json["result"], "Hello Me!");
    a.stop().await;
    b.stop().await;
}

/// `complete` keeps the first outcome, from whichever server, and releases
/// the lock once: a late outcome of an old task never frees a newer task's
/// lock; an unknown id changes nothing.
async fn the_first_outcome_wins_and_releases_the_lock_once(db: Db) {
    let a = db.store(|store| store).await;
    let b = db.store(|store| store).await;

    let (record, spec) = running_record("t", Lock::Signature, &());
    let first = record.task_id;
    assert_eq!(
        a.try_start(record, &spec).await.unwrap(),
        Admission::Started
    );
    let (again, _) = running_record("t", Lock::Signature, &());
    assert_eq!(
        b.try_start(again, &spec).await.unwrap(),
        Admission::Locked(first)
    );
    let now = SystemTime::now();
    b.complete(first, TaskOutcome::Finished(json!(1)), now)
        .await
        .unwrap();
    a.complete(first, TaskOutcome::Cancelled, now)
        .await
        .unwrap();
    let ended = a.get(first).await.unwrap().unwrap();
    assert_eq!(ended.status, TaskStatus::Finished);
    assert_eq!(ended.result, Some(json!(1)));

    let (record, _) = running_record("t", Lock::Signature, &());
    let second = record.task_id;
    assert_eq!(
        a.try_start(record, &spec).await.unwrap(),
        Admission::Started
    );
    b.complete(first, TaskOutcome::Failed("late".into()), now)
        .await
        .unwrap();
    let (third, _) = running_record("t", Lock::Signature, &());
    assert_eq!(
        b.try_start(third, &spec).await.unwrap(),
        Admission::Locked(second),
        "a late outcome of the first task must not free the second's lock"
    );
    a.complete(TaskId::new(), TaskOutcome::Cancelled, now)
        .await
        .unwrap();
    assert_eq!(db.rows().await, 2);
}

/// What a server reads back is what the other recorded, for every outcome
/// and both kinds of lock (times to the millisecond, as they are shown).
async fn records_round_trip_with_every_outcome(db: Db) {
    let a = db.store(|store| store).await;
    let b = db.store(|store| store).await;
    let outcomes = [
        TaskOutcome::Finished(json!({"greeting": "Hello Me!", "n": [1, 2]})),
        TaskOutcome::Finished(Value::Null),
        TaskOutcome::Failed("boom".into()),
        TaskOutcome::Cancelled,
    ];
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let lock = if i % 2 == 0 { Lock::Args } else { Lock::None };
        let (mut record, spec) = running_record("round_trip", lock, &json!({ "i": i }));
        record.start_time = UNIX_EPOCH + Duration::from_millis(1_777_000_000_123);
        assert_eq!(
            a.try_start(record.clone(), &spec).await.unwrap(),
            Admission::Started
        );
        assert_eq!(b.get(record.task_id).await.unwrap(), Some(record.clone()));

        let end_time = UNIX_EPOCH + Duration::from_millis(1_777_000_001_456);
        b.complete(record.task_id, outcome.clone(), end_time)
            .await
            .unwrap();
        assert!(record.complete(outcome.clone(), end_time));
        let read = a.get(record.task_id).await.unwrap();
        assert_eq!(read, Some(record.clone()), "{outcome:?}");
        assert_eq!(
            serde_json::to_value(read.unwrap()).unwrap(),
            serde_json::to_value(&record).unwrap()
        );
    }
}

/// An ended record is kept for the TTL, then no server shows it, and
/// `purge_expired` deletes its row. A running one never expires.
async fn ended_records_expire_after_the_ttl(db: Db) {
    let ttl = Duration::from_secs(1);
    let a = db.store(|store| store.ttl(ttl)).await;
    let b = db.store(|store| store.ttl(ttl)).await;
    let (record, spec) = running_record("t", Lock::None, &());
    let id = record.task_id;
    a.try_start(record, &spec).await.unwrap();
    let (record, spec) = running_record("t", Lock::None, &());
    let running = record.task_id;
    a.try_start(record, &spec).await.unwrap();

    a.complete(id, TaskOutcome::Finished(json!(1)), SystemTime::now())
        .await
        .unwrap();
    assert!(b.get(id).await.unwrap().is_some(), "kept for the TTL");
    let deadline = Instant::now() + WAIT;
    while b.get(id).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the record never expired");
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(db.rows().await, 2, "hidden, not yet deleted");
    assert_eq!(a.purge_expired().await.unwrap(), 1);
    assert_eq!(b.purge_expired().await.unwrap(), 0);
    assert_eq!(db.rows().await, 1);
    assert_eq!(
        a.get(running).await.unwrap().map(|record| record.status),
        Some(TaskStatus::Running),
        "running records never expire"
    );
}

/// Past the capacity, a start evicts the record that ended first (never a
/// running one); with every row a running task's, starts are refused; the
/// table never holds more rows than the capacity.
async fn past_the_capacity_the_first_ended_goes_and_running_tasks_stay(db: Db) {
    let a = db.store(|store| store.capacity(3)).await;
    let b = db.store(|store| store.capacity(3)).await;
    let (x, _) = start(&a).await;
    let (y, _) = start(&b).await;
    let (z, _) = start(&a).await;
    finish(&b, y).await;
    finish(&a, x).await;
    // y ended first: it goes first.
    let (d, admitted) = start(&b).await;
    assert_eq!(admitted, Admission::Started);
    assert!(a.get(y).await.unwrap().is_none());
    assert!(a.get(x).await.unwrap().is_some());
    let (e, admitted) = start(&a).await;
    assert_eq!(admitted, Admission::Started);
    assert!(b.get(x).await.unwrap().is_none());
    // z, d and e are running: no room.
    assert_eq!(start(&b).await.1, Admission::Full);
    assert_eq!(start(&a).await.1, Admission::Full);
    for id in [z, d, e] {
        assert!(a.get(id).await.unwrap().is_some(), "running tasks stay");
    }
    assert_eq!(db.rows().await, 3);

    // Many more starts and ends: still at most 3 rows.
    for id in [z, d, e] {
        finish(&a, id).await;
    }
    for i in 0..20 {
        let store = if i % 2 == 0 { &a } else { &b };
        let (id, admitted) = start(store).await;
        assert_eq!(admitted, Admission::Started);
        finish(store, id).await;
        assert!(db.rows().await <= 3);
    }
}

/// Starts a task of no lock on `store`.
/// A cancelled task (refused at its start, say, with a `503` the client
/// retries) has no result to answer a retry with: its key starts the task
/// again, on any server. A finished one keeps its key.
async fn a_cancelled_task_frees_its_idempotency_key(db: Db) {
    let a = db.store(|store| store).await;
    let b = db.store(|store| store).await;
    let (record, spec) = keyed_record("t", "key", 1);
    let cancelled = record.task_id;
    assert_eq!(
        a.try_start(record, &spec).await.unwrap(),
        Admission::Started
    );
    a.complete(cancelled, TaskOutcome::Cancelled, SystemTime::now())
        .await
        .unwrap();
    let (record, spec) = keyed_record("t", "key", 1);
    let retried = record.task_id;
    assert_eq!(
        b.try_start(record, &spec).await.unwrap(),
        Admission::Started,
        "the retry after a cancelled start starts the task"
    );
    finish(&b, retried).await;
    let (record, spec) = keyed_record("t", "key", 1);
    assert_eq!(
        a.try_start(record, &spec).await.unwrap(),
        Admission::Repeated(retried)
    );
    let old = a
        .get(cancelled)
        .await
        .unwrap()
        .expect("the cancelled record stays");
    assert_eq!(old.status, TaskStatus::Cancelled);
}

async fn start(store: &SqlStore) -> (TaskId, Admission) {
    let (record, spec) = running_record("t", Lock::None, &());
    let id = record.task_id;
    (id, store.try_start(record, &spec).await.unwrap())
}

/// Ends the task `id` as finished.
async fn finish(store: &SqlStore, id: TaskId) {
    let outcome = TaskOutcome::Finished(json!(1));
    store
        .complete(id, outcome, SystemTime::now())
        .await
        .unwrap();
}

/// Starts racing on two servers fill the capacity exactly: no more, no
/// fewer.
async fn concurrent_starts_never_exceed_the_capacity(db: Db) {
    let a = Arc::new(db.store(|store| store.capacity(10)).await);
    let b = Arc::new(db.store(|store| store.capacity(10)).await);
    let ready = Arc::new(Barrier::new(40));
    let starts = (0..40).map(|i| {
        let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
        let ready = Arc::clone(&ready);
        tokio::spawn(async move {
            let (record, spec) = running_record("t", Lock::None, &i);
            ready.wait().await;
            store.try_start(record, &spec).await.unwrap()
        })
    });
    let starts: Vec<_> = starts.collect();
    let mut started = 0;
    for start in starts {
        match start.await.unwrap() {
            Admission::Started => started += 1,
            Admission::Full => {}
            other => panic!("no lock or key was asked for: {other:?}"),
        }
    }
    assert_eq!(started, 10);
    assert_eq!(db.rows().await, 10);
}

/// A key used on server A is known to server B: the same start is sent
/// to A's task (running, then ended), other arguments are a `422`, and
/// the task ran once.
async fn an_idempotency_key_holds_across_servers(db: Db) {
    let gate = AsyncGate::default();
    let a = Server::start(&db, &gate, |store| store).await;
    let b = Server::start(&db, &gate, |store| store).await;
    const KEY: &str = "8e03978e-40d5-43e8-bc93-6894a57f9324";

    let started = a.post_keyed("/hello-single?name=Me", KEY).await;
    assert_eq!(started.status, StatusCode::ACCEPTED);
    let location = started.location();
    let repeated = b.post_keyed("/hello-single?name=Me", KEY).await;
    assert_eq!(repeated.status, StatusCode::SEE_OTHER);
    assert_eq!(repeated.location(), location);
    assert!(
        repeated.headers.get("x-task-lock").is_none(),
        "the key's 303"
    );
    let reused = b.post_keyed("/hello-single?name=You", KEY).await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.json["error"], "idempotency-key-reused");
    let bad = b.post_keyed("/hello-single?name=Me", "two words").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json["error"], "invalid-idempotency-key");

    gate.open();
    b.ended(&location).await;
    let after = b.post_keyed("/hello-single?name=Me", KEY).await;
    assert_eq!(after.status, StatusCode::SEE_OTHER, "kept with its row");
    assert_eq!(after.location(), location);
    let unkeyed = a.post("/hello-single?name=Me").await;
    assert_eq!(
        unkeyed.status,
        StatusCode::ACCEPTED,
        "the lock was released"
    );
    a.ended(&unkeyed.location()).await;
    let (a, b) = (a.stop().await, b.stop().await);
    assert_eq!(a.completed + b.completed, 2, "the keyed task ran once");
}

/// At the store: a key is scoped to its task's signature, and is kept
/// exactly as long as its row: past the capacity it goes with it.
async fn idempotency_keys_go_with_their_rows(db: Db) {
    let a = db.store(|store| store.capacity(2)).await;
    let b = db.store(|store| store.capacity(2)).await;
    let mut first = None;
    for i in 0..5 {
        let (record, spec) = keyed_record("t", &format!("key-{i}"), 1);
        let id = record.task_id;
        assert_eq!(
            a.try_start(record, &spec).await.unwrap(),
            Admission::Started
        );
        finish(&a, id).await;
        first.get_or_insert(id);
        assert!(db.rows().await <= 2);
    }
    let (record, spec) = keyed_record("t", "key-4", 1);
    let Admission::Repeated(kept) = b.try_start(record, &spec).await.unwrap() else {
        panic!("key-4's row is kept");
    };
    let (record, spec) = keyed_record("t", "key-4", 2);
    assert_eq!(
        b.try_start(record, &spec).await.unwrap(),
        Admission::KeyReused(kept)
    );
    let (record, spec) = keyed_record("u", "key-4", 1);
    assert_eq!(
        b.try_start(record, &spec).await.unwrap(),
        Admission::Started,
        "another task's key"
    );
    let (record, spec) = keyed_record("t", "key-0", 1);
    let again = record.task_id;
    assert_eq!(
        b.try_start(record, &spec).await.unwrap(),
        Admission::Started,
        "key-0 went with its evicted row"
    );
    assert_ne!(Some(again), first);
}

/// A table made before idempotency keys (without their columns) gets them
/// when a store is built, keeping its rows.
async fn a_table_of_an_earlier_version_gets_the_idempotency_columns(db: Db) {
    // A queue creates the database (the SQLite file) with its own tables.
    drop(db.queue().await);
    db.execute(
        "CREATE TABLE tower_background_tasks (
            task_id        TEXT PRIMARY KEY,
            signature      TEXT NOT NULL,
            args_signature TEXT,
            status         TEXT NOT NULL,
            start_time     BIGINT NOT NULL,
            end_time       BIGINT,
            result         TEXT,
            error          TEXT,
            lock_key       TEXT UNIQUE,
            lease_until    BIGINT,
            end_order      BIGINT,
            expires_at     BIGINT
        )",
    )
    .await;
    let old = TaskId::new();
    db.execute(&format!(
        "INSERT INTO tower_background_tasks (task_id, signature, status, start_time)
        VALUES ('{old}', '36f992696100', 'running', 0)"
    ))
    .await;

    let store = db.store(|store| store).await;
    let (record, spec) = keyed_record("t", "key", 1);
    assert_eq!(
        store.try_start(record, &spec).await.unwrap(),
        Admission::Started
    );
    let (record, spec) = keyed_record("t", "key", 1);
    assert!(matches!(
        store.try_start(record, &spec).await.unwrap(),
        Admission::Repeated(_)
    ));
    assert!(
        store.get(old).await.unwrap().is_some(),
        "the old row is kept"
    );
    // Built again on the migrated table: nothing left to add.
    db.store(|store| store).await;
}

/// A task aborted at the end of a shutdown's grace period is recorded
/// `cancelled` from its drop, on a tokio task of its own (a SQL write does
/// not finish at once): `TaskRegistry::flush` waits for that write, so it
/// is done before the server's runtime ends, as the server's `main` would
/// end it right after. (SQLite only: what is tested is the registry.)
#[test]
fn flush_writes_the_end_of_a_task_aborted_at_shutdown() {
    let outside = tokio::runtime::Runtime::new().unwrap();
    let db = outside.block_on(Db::sqlite());
    let server = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let aborted = server.block_on(async {
        let registry = TaskRegistry::builder()
            .store(db.store(|store| store).await)
            .build();
        let supervisor = Supervisor::builder()
            .grace_period(Duration::from_millis(100))
            .build();
        let spec = TaskSpec::new("t", Lock::Signature, &()).unwrap();
        let started = registry
            .start(&supervisor.tasks(), &spec, std::future::pending::<()>())
            .await
            .unwrap();
        let tower_background::tracking::Started::Accepted(record) = started else {
            panic!("the task starts: {started:?}");
        };
        let report = supervisor.shutdown().await;
        assert_eq!(report.stats.cancelled, 1, "{report}");
        registry.flush().await;
        record.task_id
    });
    // The server's runtime ends, and whatever it was still running with it.
    drop(server);
    let record = outside.block_on(async {
        let store = db.store(|store| store).await;
        store.get(aborted).await.unwrap().expect("the record")
    });
    assert_eq!(record.status, TaskStatus::Cancelled, "{record:?}");
}

/// A running record of the task `name` with `args`, under the
/// idempotency key `key`, and its spec.
fn keyed_record(name: &str, key: &str, args: u8) -> (TaskRecord, TaskSpec) {
    let spec = TaskSpec::new(name, Lock::None, &args)
        .unwrap()
        .with_idempotency_key(key.parse().unwrap(), &args)
        .unwrap();
    let record = TaskRecord::running(TaskId::new(), &spec, SystemTime::now());
    (record, spec)
}

// ---------------------------------------------------------------------------
// Two servers on one database.

#[derive(Deserialize, Serialize)]
struct Hello {
    name: String,
}

impl Hello {
    fn me() -> Self {
        Self {
            name: "Me".to_owned(),
        }
    }
}

/// One "machine": a supervisor, a registry on a [`SqlStore`] of its own
/// queue (its own connection pool) and the `/hello-single` route, with the
/// signature lock.
struct Server {
    supervisor: Supervisor,
    app: Router,
}

impl Server {
    async fn start(
        db: &Db,
        gate: &AsyncGate,
        settings: impl FnOnce(SqlStoreBuilder) -> SqlStoreBuilder,
    ) -> Self {
        let supervisor = Supervisor::new();
        let registry = TaskRegistry::builder()
            .store(db.store(settings).await)
            .build();
        let gate = gate.clone();
        let route = registry.route("hello_task", Lock::Signature, move |args: Hello| {
            let gate = gate.clone();
            async move {
                gate.pass().await;
                format!("Hello {}!", args.name)
            }
        });
        let app = Router::new()
            .route("/hello-single", route)
            .layer(supervisor.layer());
        Self { supervisor, app }
    }

    async fn post(&self, uri: &str) -> Reply {
        self.call(Request::post(uri)).await
    }

    async fn post_keyed(&self, uri: &str, key: &str) -> Reply {
        self.call(Request::post(uri).header("idempotency-key", key))
            .await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.call(Request::get(uri)).await
    }

    async fn call(&self, request: axum::http::request::Builder) -> Reply {
        let request = request.body(Body::empty()).unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        // Reading the body to its end sends the response: a started task
        // starts.
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        Reply {
            status,
            headers,
            json,
        }
    }

    /// Opens connections in the store's pool, as a server that has been
    /// serving for a while has them: so that concurrent starts really run
    /// at the same time, rather than one by one while the pool connects.
    async fn warm_up(&self) {
        let unknown = location_of(TaskId::new());
        let gets = (0..10).map(|_| self.get(&unknown));
        for reply in futures_util::future::join_all(gets).await {
            assert_eq!(reply.status, StatusCode::NOT_FOUND);
        }
    }

    /// Polls `location` until the task has ended, as a client would.
    async fn ended(&self, location: &str) -> Reply {
        let deadline = Instant::now() + WAIT;
        loop {
            let reply = self.get(location).await;
            assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json);
            if reply.json["status"] != "running" {
                return reply;
            }
            assert!(Instant::now() < deadline, "the task never ended");
            tokio::time::sleep(POLL).await;
        }
    }

    async fn stop(self) -> tower_background::Stats {
        self.supervisor.shutdown().await.stats
    }
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    json: Value,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers[name].to_str().unwrap()
    }

    /// Where the reply sends the client: the task's status URL.
    fn location(&self) -> String {
        self.header("location").to_owned()
    }
}

fn location_of(task_id: TaskId) -> String {
    format!("/hello-single?task_id={task_id}")
}

/// A running record of the task `name` with `args`, and its spec.
fn running_record<A: Serialize>(name: &str, lock: Lock, args: &A) -> (TaskRecord, TaskSpec) {
    let spec = TaskSpec::new(name, lock, args).unwrap();
    let record = TaskRecord::running(TaskId::new(), &spec, SystemTime::now());
    (record, spec)
}

// ---------------------------------------------------------------------------
// A fresh database per test.

/// What only this suite asks of a test's database: see [`databases`] for
/// the database itself.
impl Db {
    /// A store on a queue of its own (a pool of its own), as another
    /// machine would have.
    async fn store(&self, settings: impl FnOnce(SqlStoreBuilder) -> SqlStoreBuilder) -> SqlStore {
        settings(SqlStore::builder(&self.queue().await))
            .build()
            .await
            .expect("the store creates its table")
    }

    /// Runs one statement on the test's database.
    async fn execute(&self, statement: &str) {
        match self.engine() {
            Engine::Sqlite => {
                let mut conn = self.sqlite_connection().await;
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()))
                    .execute(&mut conn)
                    .await
                    .map(drop)
            }
            Engine::Postgres => {
                let mut conn = self.postgres_connection().await;
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()))
                    .execute(&mut conn)
                    .await
                    .map(drop)
            }
        }
        .expect("the statement runs")
    }

    /// How many rows the store's table holds, expired ones included.
    async fn rows(&self) -> i64 {
        const COUNT: &str = "SELECT COUNT(*) FROM tower_background_tasks";
        match self.engine() {
            Engine::Sqlite => {
                let mut conn = self.sqlite_connection().await;
                sqlx::query_scalar(COUNT).fetch_one(&mut conn).await
            }
            Engine::Postgres => {
                let mut conn = self.postgres_connection().await;
                sqlx::query_scalar(COUNT).fetch_one(&mut conn).await
            }
        }
        .expect("count the rows")
    }
}
