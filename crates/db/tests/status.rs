#![allow(clippy::unwrap_used)]
//! Business status: applying a status (applied, unchanged, late, stale, unknown order), the version
//! bump, the history in order, the first history row written at creation, and the
//! `order_versions` notification every version change sends.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use clap::Parser;
use orderbridge_db::DbConfig;
use orderbridge_db::create::{Created, create_order};
use orderbridge_db::status::{self, StatusApplied, StatusChange};
use orderbridge_domain::{
    ClientId, ClientScope, NewOrder, NewOrderRequest, Order, OrderId, StatusSource,
};
use orderbridge_testkit::TestDatabase;
use serde_json::json;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgListener;
use uuid::Uuid;

const SF_ID: &str = "801xx000003GZ8bAAG";

async fn client(pool: &PgPool) -> ClientScope {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO api_clients (id, name) VALUES ($1, $2)")
        .bind(id)
        .bind(format!("client-{id}"))
        .execute(pool)
        .await
        .unwrap();
    orderbridge_db::clients::scope(pool, ClientId::from_uuid(id))
        .await
        .unwrap()
        .unwrap()
}

/// An order created the way the API creates one, synced to [`SF_ID`].
async fn order(pool: &PgPool, created_at: DateTime<Utc>) -> Order {
    let client = client(pool).await;
    let req: NewOrderRequest = serde_json::from_value(json!({
        "client_ref": "PO-1",
        "customer": {"external_id": "C-1", "name": "One", "email": "one@example.com"},
        "currency": "EUR",
        "lines": [{"sku": "A", "name": "a", "quantity": 1, "unit_price": "1.00"}]
    }))
    .unwrap();
    let order = NewOrder::parse(req)
        .unwrap()
        .into_order(Uuid::now_v7(), created_at);
    let Created::New { order, .. } = create_order(pool, &client, None, order, None)
        .await
        .unwrap()
    else {
        panic!("not created")
    };
    sqlx::query("UPDATE orders SET salesforce_id = $2, sync_state = 'synced' WHERE id = $1")
        .bind(order.id.get())
        .bind(SF_ID)
        .execute(pool)
        .await
        .unwrap();
    *order
}

async fn version_and_status(pool: &PgPool, id: OrderId) -> (i64, String) {
    sqlx::query_as("SELECT version, status FROM orders WHERE id = $1")
        .bind(id.get())
        .fetch_one(pool)
        .await
        .unwrap()
}

fn change(status: &str, at: DateTime<Utc>) -> StatusChange<'_> {
    StatusChange {
        status,
        at,
        source: StatusSource::SALESFORCE,
    }
}

#[tokio::test]
async fn creation_writes_the_first_history_row() {
    let db = TestDatabase::new().await;
    let created = Utc::now() - TimeDelta::hours(1);
    let order = order(&db.pool, created).await;
    let history = status::history(&db.pool, order.id).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].status, "submitted");
    assert_eq!(history[0].source, "api");
    assert_eq!(history[0].at.timestamp_micros(), created.timestamp_micros());
}

#[tokio::test]
async fn applied_unchanged_late_stale_and_unknown() {
    let db = TestDatabase::new().await;
    let t0 = Utc::now() - TimeDelta::hours(1);
    let order = order(&db.pool, t0).await;
    let (v0, _) = version_and_status(&db.pool, order.id).await;
    let mut conn = db.pool.acquire().await.unwrap();

    let t1 = t0 + TimeDelta::minutes(10);
    let applied = status::apply_by_salesforce_id(&mut conn, SF_ID, change("Activated", t1))
        .await
        .unwrap();
    assert_eq!(applied, StatusApplied::Applied { version: v0 + 1 });
    assert_eq!(
        version_and_status(&db.pool, order.id).await,
        (v0 + 1, "Activated".to_owned())
    );

    // The same status again (a redelivered event), even later: nothing written.
    let again = status::apply_by_salesforce_id(
        &mut conn,
        SF_ID,
        change("Activated", t1 + TimeDelta::minutes(1)),
    )
    .await
    .unwrap();
    assert_eq!(again, StatusApplied::Unchanged);

    // Decided before the current status (it arrived late, on another stream): into the
    // history where it was decided, the current status untouched, a new version.
    let late = status::apply_by_salesforce_id(
        &mut conn,
        SF_ID,
        change("Draft", t1 - TimeDelta::seconds(1)),
    )
    .await
    .unwrap();
    assert_eq!(late, StatusApplied::Late { version: v0 + 2 });
    assert_eq!(
        version_and_status(&db.pool, order.id).await,
        (v0 + 2, "Activated".to_owned())
    );
    // The same late change again (a replay): nothing written.
    let stale = status::apply_by_salesforce_id(
        &mut conn,
        SF_ID,
        change("Draft", t1 - TimeDelta::seconds(1)),
    )
    .await
    .unwrap();
    assert_eq!(stale, StatusApplied::Stale);
    assert_eq!(
        version_and_status(&db.pool, order.id).await,
        (v0 + 2, "Activated".to_owned())
    );

    // By order id, later: applied.
    let t2 = t1 + TimeDelta::minutes(5);
    let shipped = status::apply(&mut conn, order.id, change("Shipped", t2))
        .await
        .unwrap();
    assert_eq!(shipped, StatusApplied::Applied { version: v0 + 3 });

    let unknown = status::apply_by_salesforce_id(&mut conn, "801xx0000000000AAA", change("X", t2))
        .await
        .unwrap();
    assert_eq!(unknown, StatusApplied::UnknownOrder);
    let unknown = status::apply(
        &mut conn,
        OrderId::from_uuid(Uuid::now_v7()),
        change("X", t2),
    )
    .await
    .unwrap();
    assert_eq!(unknown, StatusApplied::UnknownOrder);

    let history = status::history(&db.pool, order.id).await.unwrap();
    let names: Vec<(&str, &str)> = history
        .iter()
        .map(|e| (e.status.as_str(), e.source.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("submitted", "api"),
            ("Draft", "salesforce"),
            ("Activated", "salesforce"),
            ("Shipped", "salesforce")
        ],
        "in the order the statuses were decided"
    );
    assert_eq!(history[2].at.timestamp_micros(), t1.timestamp_micros());
    assert_eq!(history[3].at.timestamp_micros(), t2.timestamp_micros());
    assert_eq!(
        version_and_status(&db.pool, order.id).await,
        (v0 + 3, "Shipped".to_owned())
    );
}

#[tokio::test]
async fn a_change_older_than_creation_is_stale() {
    let db = TestDatabase::new().await;
    let t0 = Utc::now();
    let order = order(&db.pool, t0).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let stale = status::apply(
        &mut conn,
        order.id,
        change("Activated", t0 - TimeDelta::seconds(1)),
    )
    .await
    .unwrap();
    assert_eq!(stale, StatusApplied::Stale);
    assert_eq!(status::history(&db.pool, order.id).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appliers_serialize() {
    let db = TestDatabase::new().await;
    let t0 = Utc::now() - TimeDelta::hours(1);
    let order = order(&db.pool, t0).await;
    let (v0, _) = version_and_status(&db.pool, order.id).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            let at = t0 + TimeDelta::minutes(1);
            status::apply_by_salesforce_id(
                &mut conn,
                SF_ID,
                StatusChange {
                    status: "Activated",
                    at,
                    source: StatusSource::SALESFORCE,
                },
            )
            .await
            .map(|a| (i, a))
        }));
    }
    let mut applied = 0;
    for t in tasks {
        match t.await.unwrap().unwrap().1 {
            StatusApplied::Applied { .. } => applied += 1,
            StatusApplied::Unchanged => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(applied, 1, "exactly one applier writes the status");
    assert_eq!(status::history(&db.pool, order.id).await.unwrap().len(), 2);
    assert_eq!(version_and_status(&db.pool, order.id).await.0, v0 + 1);
}

async fn next_notification(listener: &mut PgListener) -> String {
    tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification within 10 s")
        .unwrap()
        .payload()
        .to_owned()
}

#[tokio::test]
async fn every_version_change_notifies() {
    let db = TestDatabase::new().await;
    let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen("order_versions").await.unwrap();

    // Creation: version 1.
    let order = order(&db.pool, Utc::now() - TimeDelta::hours(1)).await;
    let id = order.id.get();
    assert_eq!(next_notification(&mut listener).await, format!("{id}:1"));
    // The test's own sync update in `order` bumped it to 2.
    assert_eq!(next_notification(&mut listener).await, format!("{id}:2"));

    // A status change.
    let mut conn = db.pool.acquire().await.unwrap();
    let StatusApplied::Applied { version } =
        status::apply(&mut conn, order.id, change("Activated", Utc::now()))
            .await
            .unwrap()
    else {
        panic!("not applied")
    };
    assert_eq!(version, 3);
    assert_eq!(next_notification(&mut listener).await, format!("{id}:3"));

    // Nothing written, nothing sent: the next notification is the next real change.
    status::apply(&mut conn, order.id, change("Activated", Utc::now()))
        .await
        .unwrap();
    sqlx::query("UPDATE orders SET sync_attempts = sync_attempts + 1 WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(next_notification(&mut listener).await, format!("{id}:4"));

    // A rolled-back change notifies nobody.
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("UPDATE orders SET sync_attempts = 99 WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    sqlx::query("UPDATE orders SET sync_attempts = 0 WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(next_notification(&mut listener).await, format!("{id}:5"));
}

const STATUS_MIGRATION: i64 = 20261203000100;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    db: DbConfig,
}

#[tokio::test]
async fn the_migration_backfills_history_for_existing_orders() {
    // A database as the previous release left it: migrated up to (not including) this one.
    let fresh = orderbridge_testkit::FreshDatabase::new("ob_status");
    let pool = Cli::parse_from(["test", "--database-url", &fresh.url])
        .db
        .connect("status-test")
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("ob-migrations-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = orderbridge_testkit::workspace_root().join("migrations");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let version: i64 = name.split('_').next().unwrap().parse().unwrap();
        if version < STATUS_MIGRATION {
            std::fs::copy(&path, dir.join(&name)).unwrap();
        }
    }
    Migrator::new(dir.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let client = Uuid::now_v7();
    sqlx::query("INSERT INTO api_clients (id, name) VALUES ($1, 'old')")
        .bind(client)
        .execute(&pool)
        .await
        .unwrap();
    let id = Uuid::now_v7();
    let created = Utc::now() - TimeDelta::hours(2);
    sqlx::query(
        "INSERT INTO orders (id, client_id, client_ref, customer, currency, total, status,
             created_at, updated_at)
         VALUES ($1, $2, 'OLD-1', '{}'::jsonb, 'EUR', 0, 'submitted', $3, $3)",
    )
    .bind(id)
    .bind(client)
    .bind(created)
    .execute(&pool)
    .await
    .unwrap();

    orderbridge_db::MIGRATOR.run(&pool).await.unwrap();
    let history = status::history(&pool, OrderId::from_uuid(id))
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (history[0].status.as_str(), history[0].source.as_str()),
        ("submitted", "api")
    );
    assert_eq!(history[0].at.timestamp_micros(), created.timestamp_micros());
    // The current status dates from creation: an older change is stale.
    let mut conn = pool.acquire().await.unwrap();
    let stale = status::apply(
        &mut conn,
        OrderId::from_uuid(id),
        change("Activated", created - TimeDelta::seconds(1)),
    )
    .await
    .unwrap();
    assert_eq!(stale, StatusApplied::Stale);
    drop(conn);
    pool.close().await;
}
