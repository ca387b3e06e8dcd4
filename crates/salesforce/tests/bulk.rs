//! Bulk API 2.0 ingest, the client against the real emulator (in-process on port 0): the whole
//! round for many rows in a handful of calls, relationship columns, per-row errors as
//! Salesforce writes them, a job that fails half-way (unprocessed rows), and the state
//! machine's refusals, including hostile uploads.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use orderbridge_salesforce::bulk::{IngestJob, JobState, Operation, Poll, to_csv};
use orderbridge_salesforce::{Client, Error, ErrorClass, SalesforceConfig};
use serde_json::{Map, Value, json};
use sf_emulator::{EmulatorConfig, RunningEmulator};

const POLL: Poll = Poll {
    first: Duration::from_millis(20),
    growth: 2.0,
    max: Duration::from_millis(200),
    timeout: Duration::from_secs(60),
    expected: None,
};

async fn start() -> (RunningEmulator, Client) {
    let emulator = sf_emulator::spawn(EmulatorConfig::ephemeral())
        .await
        .unwrap();
    let client = Client::new(&SalesforceConfig {
        login_url: emulator.base_url.clone(),
        request_timeout: Duration::from_secs(30),
        ..SalesforceConfig::default()
    })
    .unwrap();
    (emulator, client)
}

async fn admin(emulator: &RunningEmulator, method: &str, path: &str, body: Value) -> Value {
    let http = reqwest::Client::new();
    let url = format!("{}/__admin/{path}", emulator.base_url);
    let request = match method {
        "GET" => http.get(url),
        _ => http.post(url).json(&body),
    };
    let response = request.send().await.unwrap();
    assert!(response.status().is_success(), "admin {path}");
    response.json().await.unwrap()
}

async fn api_calls(emulator: &RunningEmulator) -> u64 {
    admin(emulator, "GET", "stats", Value::Null).await["api_calls_total"]
        .as_u64()
        .unwrap()
}

fn accounts(n: usize, prefix: &str) -> Vec<Map<String, Value>> {
    (0..n)
        .map(|i| {
            json!({"Name": format!("Bulk, \"{i}\""), "External_Id__c": format!("{prefix}-{i}"), "Phone": "+1 555 0100"})
                .as_object()
                .unwrap()
                .clone()
        })
        .collect()
}

fn refs(records: &[Map<String, Value>]) -> Vec<&Map<String, Value>> {
    records.iter().collect()
}

#[tokio::test]
async fn a_job_writes_every_row_in_a_handful_of_calls() {
    let (emulator, client) = start().await;
    client.login().await.unwrap();
    let records = accounts(2_500, "ACC");
    let csv = to_csv(&refs(&records)).unwrap();
    let before = api_calls(&emulator).await;
    let job = IngestJob {
        object: "Account",
        operation: Operation::Upsert,
        external_id_field: Some("External_Id__c"),
    };
    let results = client.bulk_ingest(&job, &csv, POLL, true).await.unwrap();
    let calls = api_calls(&emulator).await - before;

    assert_eq!(results.job.state, JobState::JobComplete);
    assert_eq!(results.job.number_records_processed, 2_500);
    assert_eq!(results.job.number_records_failed, 0);
    assert!(results.failed.is_empty() && results.unprocessed.is_empty());
    assert_eq!(results.successful.len(), 2_500);
    let keys: HashSet<&str> = results
        .successful
        .iter()
        .map(|r| r.fields["External_Id__c"].as_str())
        .collect();
    assert_eq!(keys.len(), 2_500, "every row comes back once");
    assert!(results.successful.iter().all(|r| r.created));
    assert!(
        results
            .successful
            .iter()
            .all(|r| r.id.as_deref().is_some_and(|id| id.starts_with("001")))
    );
    // The CSV survived quoting: a comma and quotes inside a value.
    assert_eq!(results.successful[7].fields["Name"], "Bulk, \"7\"");
    // create + upload + UploadComplete + polls + successfulResults, whatever the row count.
    assert!(calls <= 12, "{calls} calls for one job");
    let stored = admin(&emulator, "GET", "records/Account", Value::Null).await;
    assert_eq!(stored["totalSize"], 2_500);

    // The same rows again: every one an update now.
    let again = client.bulk_ingest(&job, &csv, POLL, true).await.unwrap();
    assert_eq!(again.successful.len(), 2_500);
    assert!(again.successful.iter().all(|r| !r.created));
    let stored = admin(&emulator, "GET", "records/Account", Value::Null).await;
    assert_eq!(stored["totalSize"], 2_500);
}

#[tokio::test]
async fn relationship_columns_and_per_row_errors() {
    let (emulator, client) = start().await;
    let acc = accounts(1, "PARENT");
    let parent = IngestJob {
        object: "Account",
        operation: Operation::Insert,
        external_id_field: None,
    };
    client
        .bulk_ingest(&parent, &to_csv(&refs(&acc)).unwrap(), POLL, false)
        .await
        .unwrap();

    let contacts: Vec<Map<String, Value>> = [
        json!({"LastName": "Ok", "External_Id__c": "C-1", "Account": {"External_Id__c": "PARENT-0"}}),
        // Required field missing.
        json!({"FirstName": "No last name", "External_Id__c": "C-2"}),
        // A parent that does not exist.
        json!({"LastName": "Orphan", "External_Id__c": "C-3", "Account": {"External_Id__c": "NOPE"}}),
        json!({"LastName": "Bad mail", "External_Id__c": "C-4", "Email": "not-an-address"}),
    ]
    .into_iter()
    .map(|v| v.as_object().unwrap().clone())
    .collect();
    let job = IngestJob {
        object: "Contact",
        operation: Operation::Insert,
        external_id_field: None,
    };
    let results = client
        .bulk_ingest(&job, &to_csv(&refs(&contacts)).unwrap(), POLL, false)
        .await
        .unwrap();
    assert_eq!(results.job.state, JobState::JobComplete);
    assert_eq!(results.job.number_records_failed, 3);
    assert!(results.successful.is_empty(), "not asked for");
    let error_of = |key: &str| {
        results
            .failed
            .iter()
            .find(|r| r.fields["External_Id__c"] == key)
            .and_then(|r| r.error.clone())
            .unwrap()
    };
    let missing = error_of("C-2");
    assert_eq!(missing.code, "REQUIRED_FIELD_MISSING");
    assert!(
        missing.fields.contains(&"LastName".to_owned()),
        "{missing:?}"
    );
    assert_eq!(missing.class(), ErrorClass::Permanent);
    assert!(!error_of("C-3").code.is_empty());
    assert_eq!(error_of("C-4").code, "INVALID_EMAIL_ADDRESS");

    let contacts = admin(&emulator, "GET", "records/Contact", Value::Null).await;
    assert_eq!(contacts["totalSize"], 1);
    let account_id =
        admin(&emulator, "GET", "records/Account", Value::Null).await["records"][0]["Id"].clone();
    assert_eq!(contacts["records"][0]["AccountId"], account_id);

    // Inserting a taken external id again: DUPLICATE_VALUE naming the existing record.
    let results = client
        .bulk_ingest(
            &job,
            &to_csv(&refs(&contacts_again())).unwrap(),
            POLL,
            false,
        )
        .await
        .unwrap();
    let dup = results.failed[0].error.clone().unwrap();
    assert_eq!(dup.code, "DUPLICATE_VALUE", "{dup:?}");
    let existing = contacts["records"][0]["Id"].as_str().unwrap();
    assert!(dup.message.ends_with(existing), "{dup:?}");
}

fn contacts_again() -> Vec<Map<String, Value>> {
    vec![
        json!({"LastName": "Ok", "External_Id__c": "C-1"})
            .as_object()
            .unwrap()
            .clone(),
    ]
}

#[tokio::test]
async fn a_job_that_fails_half_way_leaves_its_other_rows_unprocessed() {
    let (emulator, client) = start().await;
    admin(
        &emulator,
        "POST",
        "faults",
        json!({"bulk_fail_jobs": 1, "bulk_rows_per_second": 20000}),
    )
    .await;
    let records = accounts(1_000, "HALF");
    let job = IngestJob {
        object: "Account",
        operation: Operation::Insert,
        external_id_field: None,
    };
    let results = client
        .bulk_ingest(&job, &to_csv(&refs(&records)).unwrap(), POLL, true)
        .await
        .unwrap();
    assert_eq!(results.job.state, JobState::Failed);
    assert!(results.job.error_message.is_some());
    assert_eq!(results.successful.len(), 500);
    assert_eq!(results.unprocessed.len(), 500);
    let done: HashSet<&str> = results
        .successful
        .iter()
        .map(|r| r.fields["External_Id__c"].as_str())
        .chain(
            results
                .unprocessed
                .iter()
                .map(|f| f["External_Id__c"].as_str()),
        )
        .collect();
    assert_eq!(done.len(), 1_000, "every row is accounted for exactly once");
    let stored = admin(&emulator, "GET", "records/Account", Value::Null).await;
    assert_eq!(stored["totalSize"], 500);

    // The fault was for one job: the next one completes.
    let results = client
        .bulk_ingest(
            &job,
            &to_csv(&refs(&accounts(10, "NEXT"))).unwrap(),
            POLL,
            false,
        )
        .await
        .unwrap();
    assert_eq!(results.job.state, JobState::JobComplete);
}

#[tokio::test]
async fn the_state_machine_refuses_what_salesforce_refuses() {
    let (emulator, client) = start().await;
    let job = IngestJob {
        object: "Account",
        operation: Operation::Insert,
        external_id_field: None,
    };
    let api = |e: Error| match e {
        Error::Api { status, errors, .. } => (status, errors[0].code.clone()),
        other => panic!("expected an API error, got {other:?}"),
    };

    // An upsert needs its external id field; an unknown object is refused at creation.
    assert!(matches!(
        client
            .create_ingest_job(&IngestJob {
                operation: Operation::Upsert,
                ..job.clone()
            })
            .await,
        Err(Error::InvalidRequest(_))
    ));
    let unknown = client
        .create_ingest_job(&IngestJob {
            object: "Nope__c",
            ..job.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(api(unknown), (400, "INVALIDJOB".into()));

    // One upload per job; results only once the job is over.
    let info = client.create_ingest_job(&job).await.unwrap();
    assert_eq!(info.state, JobState::Open);
    client
        .upload_job_data(&info.id, b"Name\nOne\n")
        .await
        .unwrap();
    let second = client
        .upload_job_data(&info.id, b"Name\nTwo\n")
        .await
        .unwrap_err();
    assert_eq!(api(second).1, "BULK_API_ERROR");
    let early = client.job_results(info.clone(), true).await.unwrap_err();
    assert_eq!(api(early).1, "INVALIDJOBSTATE");
    let aborted = client
        .set_job_state(&info.id, JobState::Aborted)
        .await
        .unwrap();
    assert_eq!(aborted.state, JobState::Aborted);
    let reopened = client
        .set_job_state(&info.id, JobState::UploadComplete)
        .await
        .unwrap_err();
    assert_eq!(api(reopened).1, "INVALIDJOBSTATE");
    client.delete_job(&info.id).await.unwrap();
    assert_eq!(api(client.ingest_job(&info.id).await.unwrap_err()).0, 404);

    // Hostile or broken uploads fail the job with a reason, never the emulator.
    for (data, why) in [
        (&b"Name,Nope__c\nA,B\n"[..], "Field name not found"),
        (&b"Name,Phone\nA\n"[..], "InvalidBatch"),
        (&b"\xff\xfe\x00garbage"[..], "InvalidBatch"),
        (&b""[..], "InvalidBatch"),
    ] {
        let info = client.create_ingest_job(&job).await.unwrap();
        client.upload_job_data(&info.id, data).await.unwrap();
        client
            .set_job_state(&info.id, JobState::UploadComplete)
            .await
            .unwrap();
        let done = client.wait_for_job(&info.id, POLL).await.unwrap();
        assert_eq!(done.state, JobState::Failed, "{data:?}");
        let message = done.error_message.unwrap_or_default();
        assert!(message.contains(why), "{data:?}: {message}");
    }
    // A job completed without any upload fails too.
    let info = client.create_ingest_job(&job).await.unwrap();
    client
        .set_job_state(&info.id, JobState::UploadComplete)
        .await
        .unwrap();
    let done = client.wait_for_job(&info.id, POLL).await.unwrap();
    assert_eq!(done.state, JobState::Failed);

    // Without a session: 401, as for any REST call.
    let response = reqwest::Client::new()
        .post(format!(
            "{}/services/data/v62.0/jobs/ingest",
            emulator.base_url
        ))
        .json(&json!({"object": "Account", "operation": "insert"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let stored = admin(&emulator, "GET", "records/Account", Value::Null).await;
    assert_eq!(
        stored["totalSize"], 0,
        "nothing was written by any of these"
    );
}

#[tokio::test]
async fn waiting_gives_up_with_a_retryable_error_naming_the_job() {
    let (emulator, client) = start().await;
    admin(
        &emulator,
        "POST",
        "faults",
        json!({"bulk_rows_per_second": 10}),
    )
    .await;
    let job = IngestJob {
        object: "Account",
        operation: Operation::Insert,
        external_id_field: None,
    };
    let quick = Poll {
        timeout: Duration::from_millis(300),
        ..POLL
    };
    let e = client
        .bulk_ingest(
            &job,
            &to_csv(&refs(&accounts(1_000, "SLOW"))).unwrap(),
            quick,
            false,
        )
        .await
        .unwrap_err();
    assert!(matches!(&e, Error::BulkJobTimeout { .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Retryable);
    // Given up on, the job was aborted: it stops where it was.
    let jobs = reqwest::Client::new()
        .get(format!("{}/__admin/stats", emulator.base_url))
        .send()
        .await
        .unwrap();
    assert!(jobs.status().is_success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = admin(&emulator, "GET", "records/Account", Value::Null).await;
    let written = stored["totalSize"].as_u64().unwrap();
    assert!(written < 1_000, "the aborted job went on: {written} rows");
}

/// Polls of one job, from the emulator's count by route.
async fn job_polls(emulator: &RunningEmulator) -> u64 {
    admin(emulator, "GET", "stats", Value::Null).await["api_calls_by_route"]
        ["GET /jobs/ingest/{id}"]
        .as_u64()
        .unwrap_or(0)
}

/// A job expected to take as long as the last one is polled once or twice, however long it
/// runs; backoff alone polls it all along.
#[tokio::test]
async fn a_job_with_an_expected_time_is_polled_once_or_twice() {
    let (emulator, client) = start().await;
    // 2,000 rows at 2,000 a second: about a second of processing each.
    admin(
        &emulator,
        "POST",
        "faults",
        json!({"bulk_rows_per_second": 2_000}),
    )
    .await;
    let job = IngestJob {
        object: "Account",
        operation: Operation::Insert,
        external_id_field: None,
    };
    let first = client
        .bulk_ingest(
            &job,
            &to_csv(&refs(&accounts(2_000, "PACE-A"))).unwrap(),
            POLL,
            false,
        )
        .await
        .unwrap();
    let by_backoff = job_polls(&emulator).await;
    assert_eq!(first.job.state, JobState::JobComplete);
    assert!(
        first.waited >= Duration::from_millis(800),
        "waited {:?} for a second of processing",
        first.waited
    );

    let expecting = Poll {
        expected: Some(first.waited),
        ..POLL
    };
    let second = client
        .bulk_ingest(
            &job,
            &to_csv(&refs(&accounts(2_000, "PACE-B"))).unwrap(),
            expecting,
            false,
        )
        .await
        .unwrap();
    let by_expectation = job_polls(&emulator).await - by_backoff;
    assert_eq!(second.job.state, JobState::JobComplete);
    assert_eq!(second.job.number_records_processed, 2_000);
    assert!(
        by_backoff >= 6 && by_expectation <= 3,
        "polls: {by_backoff} by backoff, {by_expectation} expecting {:?}",
        first.waited
    );
}
