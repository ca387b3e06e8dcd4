//! The inbox written a batch at a time: one statement says which of a batch's event ids are
//! new, so a duplicate delivery (replayed, or twice in one batch) is applied once.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use orderbridge_testkit::TestDatabase;
use sf_subscriber::store;

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn a_batch_learns_which_of_its_events_are_new_in_one_statement() {
    let db = TestDatabase::new().await;
    let mut conn = db.pool.acquire().await.unwrap();

    // "a" twice in one batch: new once.
    let fresh = store::insert_inbox(&mut conn, &ids(&["a", "b", "a"]), "/data/OrderChangeEvent")
        .await
        .unwrap();
    assert_eq!(fresh, HashSet::from(["a".to_owned(), "b".to_owned()]));

    // The next batch replays "b": only "c" is new.
    let fresh = store::insert_inbox(&mut conn, &ids(&["b", "c"]), "/data/OrderChangeEvent")
        .await
        .unwrap();
    assert_eq!(fresh, HashSet::from(["c".to_owned()]));

    // An empty batch (a keepalive) writes nothing.
    let fresh = store::insert_inbox(&mut conn, &[], "/data/OrderChangeEvent")
        .await
        .unwrap();
    assert!(fresh.is_empty());
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM pubsub_inbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 3);
}
