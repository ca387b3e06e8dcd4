//! Bulk API 2.0 query jobs: create → poll → results pages (maxRecords, Sforce-Locator), the CSV
//! (quoting, nulls, values as REST renders them), ordering, refused queries and arguments, job
//! states (abort, delete), the failure fault, authentication, counting and latency.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// A results page as the client sees it.
struct Page {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Page {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn locator(&self) -> &str {
        self.header("Sforce-Locator")
    }

    fn count(&self) -> usize {
        self.header("Sforce-NumberOfRecords").parse().unwrap()
    }

    /// The header row and the records, parsed as CSV.
    fn rows(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(self.text.as_bytes());
        let header = reader
            .headers()
            .unwrap()
            .iter()
            .map(str::to_owned)
            .collect();
        let rows = reader
            .records()
            .map(|r| r.unwrap().iter().map(str::to_owned).collect())
            .collect();
        (header, rows)
    }
}

/// Creates `n` Accounts in one order while their external ids (`Q-000` …) follow another, and
/// returns `(id, external id)` in creation order.
async fn seed_accounts(org: &Org, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let all: Vec<usize> = (0..n).collect();
    for chunk in all.chunks(200) {
        let records: Vec<Value> = chunk
            .iter()
            .map(|i| {
                // 37 and n share no factor below 1,000 but 37 itself: a permutation of 0..n.
                let ext = format!("Q-{:04}", (i * 37) % n);
                json!({"attributes": {"type": "Account"}, "Name": format!("Acc {i}"), "External_Id__c": ext})
            })
            .collect();
        let exts: Vec<String> = records
            .iter()
            .map(|r| r["External_Id__c"].as_str().unwrap().to_owned())
            .collect();
        let r = org
            .post(
                "/composite/sobjects",
                json!({"allOrNone": true, "records": records}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        for (res, ext) in r.body.as_array().unwrap().iter().zip(exts) {
            assert_eq!(res["success"], true, "{res}");
            out.push((res["id"].as_str().unwrap().to_owned(), ext));
        }
    }
    out
}

async fn create(org: &Org, body: Value) -> Resp {
    org.post("/jobs/query", body).await
}

async fn create_ok(org: &Org, query: &str) -> String {
    let r = create(org, json!({"operation": "query", "query": query})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

/// Polls the job until `done` says so (10 s at most) and returns its info.
async fn wait_for(org: &Org, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = org.get(&format!("/jobs/query/{id}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        if done(&r.body) {
            return r.body;
        }
        assert!(Instant::now() < deadline, "job {id} stuck: {}", r.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn finished(org: &Org, id: &str) -> Value {
    wait_for(org, id, |j| {
        matches!(
            j["state"].as_str(),
            Some("JobComplete" | "Failed" | "Aborted")
        )
    })
    .await
}

async fn results_at(org: &Org, version_path: &str, id: &str, params: &[(&str, &str)]) -> Page {
    let r = org
        .http
        .get(format!(
            "{}{version_path}/jobs/query/{id}/results",
            org.base()
        ))
        .query(params)
        .bearer_auth(&org.token)
        .send()
        .await
        .unwrap();
    Page {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        text: r.text().await.unwrap(),
    }
}

async fn results(org: &Org, id: &str, params: &[(&str, &str)]) -> Page {
    results_at(org, V, id, params).await
}

fn error_of(page: &Page) -> (String, String) {
    let body: Value = serde_json::from_str(&page.text).unwrap();
    (
        body[0]["errorCode"].as_str().unwrap().to_owned(),
        body[0]["message"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_query_job_pages_every_row_once_in_creation_order() {
    let org = Org::start().await;
    let seeded = seed_accounts(&org, 250).await;
    let tricky = org
        .post(
            "/sobjects/Account",
            json!({"Name": "Acme, \"Big\"\nCorp", "External_Id__c": "Q-TRICKY"}),
        )
        .await;
    assert_eq!(tricky.status, 201, "{}", tricky.body);
    let tricky_id = tricky.body["id"].as_str().unwrap().to_owned();

    let r = create(
        &org,
        json!({"operation": "query", "query": "SELECT Id, Name, External_Id__c, Phone FROM Account",
               "contentType": "CSV", "columnDelimiter": "COMMA", "lineEnding": "LF"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let job = &r.body;
    let id = job["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("750") && id.len() == 18, "{id}");
    assert_eq!(job["operation"], "query");
    assert_eq!(job["object"], "Account");
    assert_eq!(job["state"], "UploadComplete");
    assert_eq!(job["concurrencyMode"], "Parallel");
    assert_eq!(job["contentType"], "CSV");
    assert_eq!(job["apiVersion"], json!(62.0));
    assert_eq!(job["lineEnding"], "LF");
    assert_eq!(job["columnDelimiter"], "COMMA");
    assert!(job["createdById"].as_str().unwrap().starts_with("005"));
    let created = job["createdDate"].as_str().unwrap();
    assert!(
        created.len() == 28 && created.ends_with("+0000") && &created[19..20] == ".",
        "{created}"
    );

    let info = finished(&org, &id).await;
    assert_eq!(info["state"], "JobComplete", "{info}");
    assert_eq!(info["jobType"], "V2Query");
    assert_eq!(info["numberRecordsProcessed"], 251);
    assert_eq!(info["retries"], 0);
    assert!(info["totalProcessingTime"].is_u64());
    assert!(info.get("errorMessage").is_none());

    // Three pages of at most 100, each with the header row, linked by Sforce-Locator.
    let mut pages = Vec::new();
    let mut locator = String::new();
    loop {
        let mut params = vec![("maxRecords", "100")];
        if !locator.is_empty() {
            params.push(("locator", locator.as_str()));
        }
        let page = results(&org, &id, &params).await;
        assert_eq!(page.status, 200, "{}", page.text);
        assert!(page.header("Content-Type").starts_with("text/csv"));
        assert!(page.header("Sforce-Limit-Info").starts_with("api-usage="));
        assert!(
            page.text
                .starts_with("\"Id\",\"Name\",\"External_Id__c\",\"Phone\"\n"),
            "{}",
            &page.text[..80]
        );
        locator = page.locator().to_owned();
        pages.push(page);
        if locator == "null" {
            break;
        }
        assert!(pages.len() < 10, "the locators never end");
    }
    assert_eq!(
        pages.iter().map(Page::count).collect::<Vec<_>>(),
        [100, 100, 51]
    );
    let mut ids = Vec::new();
    let mut exts = Vec::new();
    for page in &pages {
        let (header, rows) = page.rows();
        assert_eq!(header, ["Id", "Name", "External_Id__c", "Phone"]);
        assert_eq!(rows.len(), page.count());
        for row in rows {
            ids.push(row[0].clone());
            exts.push(row[2].clone());
        }
    }
    // Every record exactly once, in creation order: not sorted by external id.
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 251);
    let mut expected: Vec<String> = seeded.iter().map(|(id, _)| id.clone()).collect();
    expected.push(tricky_id.clone());
    assert_eq!(ids, expected);
    let mut sorted = exts.clone();
    sorted.sort();
    assert_ne!(exts, sorted, "rows must not come sorted by external id");

    // Quoting: every value quoted, quotes doubled, the newline kept; null Phone is "".
    let last = &pages[2];
    assert!(
        last.text.contains(&format!(
            "\"{tricky_id}\",\"Acme, \"\"Big\"\"\nCorp\",\"Q-TRICKY\",\"\"\n"
        )),
        "{}",
        last.text
    );
    let (_, rows) = last.rows();
    let row = rows.iter().find(|r| r[0] == tricky_id).unwrap();
    assert_eq!(row[1], "Acme, \"Big\"\nCorp");
    assert_eq!(row[3], "");

    // A locator is reusable and its page does not change.
    let first_locator = pages[0].locator().to_owned();
    let again = results(
        &org,
        &id,
        &[("maxRecords", "100"), ("locator", &first_locator)],
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.text, pages[1].text);
    assert_eq!(again.locator(), pages[1].locator());
}

#[tokio::test]
async fn values_render_as_the_rest_api_renders_them() {
    let org = Org::start().await;
    let seed = org
        .admin(
            Method::POST,
            "/seed",
            Some(json!({"products": [
                {"Name": "Widget", "ProductCode": "W-1", "prices": {"Standard": 10.5}},
                {"Name": "Gadget", "ProductCode": "G-1", "prices": {"Standard": 3}}]})),
        )
        .await;
    assert_eq!(seed.status, 201, "{}", seed.body);
    let q = "SELECT Id, UnitPrice, IsActive, CreatedDate, Product2.Name, Product2.Family FROM PricebookEntry";
    let id = create_ok(&org, q).await;
    assert_eq!(finished(&org, &id).await["state"], "JobComplete");
    let page = results(&org, &id, &[]).await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert_eq!(page.locator(), "null");
    let (header, rows) = page.rows();
    assert_eq!(
        header,
        [
            "Id",
            "UnitPrice",
            "IsActive",
            "CreatedDate",
            "Product2.Name",
            "Product2.Family"
        ]
    );
    assert_eq!(rows.len(), 2);
    let rest = org.query(q).await;
    assert_eq!(rest.status, 200, "{}", rest.body);
    let text = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for rec in rest.body["records"].as_array().unwrap() {
        let row = rows
            .iter()
            .find(|r| r[0] == rec["Id"].as_str().unwrap())
            .unwrap();
        assert_eq!(row[1], text(&rec["UnitPrice"]));
        assert_eq!(row[2], text(&rec["IsActive"]));
        assert_eq!(row[3], text(&rec["CreatedDate"]));
        assert_eq!(row[4], text(&rec["Product2"]["Name"]));
        assert_eq!(row[5], text(&rec["Product2"]["Family"]));
    }
    assert!(rows.iter().any(|r| r[1] == "10.5" && r[2] == "true"));
    assert!(rows.iter().all(|r| r[5].is_empty()), "null Family is empty");
    assert!(
        rows.iter().all(|r| r[3].ends_with("+0000")),
        "date-times as REST gives them"
    );
}

#[tokio::test]
async fn order_by_and_limit_are_honoured_and_query_all_answers_like_query() {
    let org = Org::start().await;
    let seeded = seed_accounts(&org, 30).await;
    let id = create_ok(
        &org,
        "SELECT External_Id__c FROM Account ORDER BY External_Id__c DESC LIMIT 5",
    )
    .await;
    assert_eq!(finished(&org, &id).await["numberRecordsProcessed"], 5);
    let (_, rows) = results(&org, &id, &[]).await.rows();
    let got: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(got, ["Q-0029", "Q-0028", "Q-0027", "Q-0026", "Q-0025"]);

    // The emulator keeps no deleted records: queryAll answers what query does.
    let r = create(
        &org,
        json!({"operation": "queryAll", "query": "SELECT Id FROM Account"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["operation"], "queryAll");
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(finished(&org, &id).await["operation"], "queryAll");
    let (_, rows) = results(&org, &id, &[]).await.rows();
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    let expected: Vec<&str> = seeded.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn records_deleted_after_the_snapshot_are_left_out_and_empty_results_have_a_header() {
    let org = Org::start().await;
    let seeded = seed_accounts(&org, 10).await;
    let id = create_ok(&org, "SELECT Id, Name FROM Account").await;
    assert_eq!(finished(&org, &id).await["numberRecordsProcessed"], 10);
    for (gone, _) in &seeded[1..3] {
        let r = org.delete(&format!("/sobjects/Account/{gone}")).await;
        assert_eq!(r.status, 204, "{}", r.body);
    }
    // Pages follow the snapshot (10 rows, 5 a page); the deleted records are skipped.
    let first = results(&org, &id, &[("maxRecords", "5")]).await;
    assert_eq!(first.count(), 3);
    assert_ne!(first.locator(), "null");
    let second = results(
        &org,
        &id,
        &[("maxRecords", "5"), ("locator", first.locator())],
    )
    .await;
    assert_eq!(second.count(), 5);
    assert_eq!(second.locator(), "null");
    let ids: Vec<String> = [first, second]
        .iter()
        .flat_map(|p| p.rows().1.into_iter().map(|r| r[0].clone()))
        .collect();
    let expected: Vec<String> = seeded
        .iter()
        .enumerate()
        .filter(|(i, _)| !(1..3).contains(i))
        .map(|(_, (id, _))| id.clone())
        .collect();
    assert_eq!(ids, expected);

    let id = create_ok(&org, "SELECT Id, Name FROM Account WHERE Name = 'nobody'").await;
    assert_eq!(finished(&org, &id).await["numberRecordsProcessed"], 0);
    let page = results(&org, &id, &[]).await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert_eq!(page.text, "\"Id\",\"Name\"\n");
    assert_eq!(page.count(), 0);
    assert_eq!(page.locator(), "null");
}

#[tokio::test]
async fn a_large_page_is_written_whole() {
    let org = Org::start().await;
    let seeded = seed_accounts(&org, 4_500).await;
    let id = create_ok(&org, "SELECT Id FROM Account").await;
    assert_eq!(finished(&org, &id).await["state"], "JobComplete");
    // No maxRecords: the default page holds them all (written a chunk per lock turn).
    let page = results(&org, &id, &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.count(), 4_500);
    assert_eq!(page.locator(), "null");
    let (_, rows) = page.rows();
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    let expected: Vec<&str> = seeded.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn other_delimiters_and_line_endings_are_honoured() {
    let org = Org::start().await;
    org.account("Pipe | Inside", "P-1").await;
    let r = create(
        &org,
        json!({"operation": "query", "query": "SELECT Name, External_Id__c FROM Account",
               "columnDelimiter": "PIPE", "lineEnding": "CRLF"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["columnDelimiter"], "PIPE");
    assert_eq!(r.body["lineEnding"], "CRLF");
    let id = r.body["id"].as_str().unwrap().to_owned();
    finished(&org, &id).await;
    let page = results(&org, &id, &[]).await;
    assert_eq!(
        page.text,
        "\"Name\"|\"External_Id__c\"\r\n\"Pipe | Inside\"|\"P-1\"\r\n"
    );
}

#[tokio::test]
async fn bad_jobs_are_refused_when_created() {
    let org = Org::start().await;
    org.account("Acme", "A-1").await;
    let q = |query: &str| json!({"operation": "query", "query": query});
    let cases = [
        (q("SELECT Nope__c FROM Account"), "INVALID_FIELD"),
        (q("SELECT Id FROM Nope__c"), "INVALID_TYPE"),
        (q("SELECT Id FROM"), "MALFORMED_QUERY"),
        (
            q("SELECT Id FROM Account WHERE Name = 'x"),
            "MALFORMED_QUERY",
        ),
        // What Bulk API 2.0 query refuses though SOQL has it.
        (q("SELECT COUNT() FROM Account"), "API_ERROR"),
        (q("SELECT Id FROM Account LIMIT 5 OFFSET 2"), "API_ERROR"),
        // Beyond the emulator's SOQL: refused as it refuses them over REST.
        (
            q("SELECT Name FROM Account GROUP BY Name"),
            "MALFORMED_QUERY",
        ),
        (
            q("SELECT Id, (SELECT Id FROM Contacts) FROM Account"),
            "MALFORMED_QUERY",
        ),
        (q("SELECT MAX(Name) FROM Account"), "MALFORMED_QUERY"),
        (json!({"query": "SELECT Id FROM Account"}), "INVALIDJOB"),
        (
            json!({"operation": "insert", "query": "SELECT Id FROM Account"}),
            "INVALIDJOB",
        ),
        (json!({"operation": "query"}), "INVALIDJOB"),
        (json!({"operation": "query", "query": "  "}), "INVALIDJOB"),
        (
            json!({"operation": "query", "query": "SELECT Id FROM Account", "contentType": "JSON"}),
            "INVALIDJOB",
        ),
        (
            json!({"operation": "query", "query": "SELECT Id FROM Account", "columnDelimiter": "COLON"}),
            "INVALIDJOB",
        ),
        (
            json!({"operation": "query", "query": "SELECT Id FROM Account", "lineEnding": "CR"}),
            "INVALIDJOB",
        ),
        (json!(["SELECT Id FROM Account"]), "INVALIDJOB"),
    ];
    for (body, code) in cases {
        let r = create(&org, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(error_code(&r.body), code, "{body}: {}", r.body);
        assert!(
            !r.body[0]["message"].as_str().unwrap().is_empty(),
            "{}",
            r.body
        );
    }
    // The same answer as the REST query for a query SOQL refuses.
    let rest = org.query("SELECT Nope__c FROM Account").await;
    let bulk = create(&org, q("SELECT Nope__c FROM Account")).await;
    assert_eq!(rest.body[0]["message"], bulk.body[0]["message"]);
    // No job was made.
    assert_eq!(org.stats().await["bulk_query_jobs"], 0);
    let list = org.get("/jobs/query").await;
    assert_eq!(
        list.body,
        json!({"done": true, "records": [], "nextRecordsUrl": null})
    );
}

#[tokio::test]
async fn results_arguments_and_unknown_jobs_are_checked() {
    let org = Org::start().await;
    seed_accounts(&org, 3).await;
    let id = create_ok(&org, "SELECT Id FROM Account").await;
    finished(&org, &id).await;
    for max in ["0", "-1", "abc", "1.5", "100001"] {
        let page = results(&org, &id, &[("maxRecords", max)]).await;
        assert_eq!(page.status, 400, "{max}: {}", page.text);
        let (code, message) = error_of(&page);
        assert_eq!(code, "API_ERROR", "{max}");
        assert!(message.contains("maxRecords"), "{message}");
    }
    assert_eq!(
        results(&org, &id, &[("maxRecords", "100000")])
            .await
            .count(),
        3
    );
    // "Mw" is row 3 (past the end), "OTk" row 99; "null" is what the last page says, not a locator.
    for locator in ["garbage!", "null", "Mw", "OTk", "LTE"] {
        let page = results(&org, &id, &[("locator", locator)]).await;
        assert_eq!(page.status, 400, "{locator}: {}", page.text);
        assert_eq!(error_of(&page).0, "INVALID_QUERY_LOCATOR", "{locator}");
    }
    // Results are read with the API version the job was created with.
    let page = results_at(&org, "/services/data/v61.0", &id, &[]).await;
    assert_eq!(page.status, 409, "{}", page.text);

    let unknown = "7505g0000000099AAA";
    for (method, path) in [
        (Method::GET, format!("/jobs/query/{unknown}")),
        (Method::GET, format!("/jobs/query/{unknown}/results")),
        (Method::DELETE, format!("/jobs/query/{unknown}")),
        // A query job is not an ingest job.
        (Method::GET, format!("/jobs/ingest/{id}")),
    ] {
        let r = org.call(method.clone(), &path, None).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
        assert_eq!(error_code(&r.body), "NOT_FOUND");
    }
    let r = org
        .patch(
            &format!("/jobs/query/{unknown}"),
            json!({"state": "Aborted"}),
        )
        .await;
    assert_eq!(r.status, 404);
    assert!(
        r.body[0]["message"].as_str().unwrap().contains(unknown),
        "{}",
        r.body
    );
    let r = org.call(Method::PUT, "/jobs/query", Some(json!({}))).await;
    assert_eq!(r.status, 405, "{}", r.body);
}

#[tokio::test]
async fn a_job_in_progress_refuses_results_and_can_be_aborted() {
    let org = Org::start().await;
    seed_accounts(&org, 6).await;
    // 6 rows at 2 a second: the job stays InProgress for 3 s.
    org.faults(json!({"bulk_rows_per_second": 2})).await;
    let id = create_ok(&org, "SELECT Id FROM Account").await;
    let info = wait_for(&org, &id, |j| j["state"] == "InProgress").await;
    assert_eq!(info["numberRecordsProcessed"], 6);
    let page = results(&org, &id, &[]).await;
    assert_eq!(page.status, 412, "{}", page.text);
    let (code, message) = error_of(&page);
    assert_eq!(code, "JOB_NOT_COMPLETE");
    assert!(
        message.ends_with("Current status: IN_PROGRESS"),
        "{message}"
    );
    // Not deletable while running; only Aborted is a state a client may set.
    let r = org.delete(&format!("/jobs/query/{id}")).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(error_code(&r.body), "INVALIDJOBSTATE");
    let r = org
        .patch(
            &format!("/jobs/query/{id}"),
            json!({"state": "UploadComplete"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(error_code(&r.body), "INVALIDJOBSTATE");
    let r = org
        .patch(&format!("/jobs/query/{id}"), json!({"state": "Aborted"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"], "Aborted");
    assert_eq!(r.body["id"], id.as_str());
    // The pacing ends; the job stays aborted.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    let info = org.get(&format!("/jobs/query/{id}")).await.body;
    assert_eq!(info["state"], "Aborted", "{info}");
    let page = results(&org, &id, &[]).await;
    assert_eq!(page.status, 412);
    assert!(error_of(&page).1.ends_with("ABORTED"));
    let r = org
        .patch(&format!("/jobs/query/{id}"), json!({"state": "Aborted"}))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(error_code(&r.body), "INVALIDJOBSTATE");
    let r = org.delete(&format!("/jobs/query/{id}")).await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(org.get(&format!("/jobs/query/{id}")).await.status, 404);

    // A finished job cannot be aborted, and can be deleted.
    org.faults(json!({"clear": true})).await;
    let id = create_ok(&org, "SELECT Id FROM Account").await;
    assert_eq!(finished(&org, &id).await["state"], "JobComplete");
    let r = org
        .patch(&format!("/jobs/query/{id}"), json!({"state": "Aborted"}))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(error_code(&r.body), "INVALIDJOBSTATE");
    assert_eq!(org.delete(&format!("/jobs/query/{id}")).await.status, 204);
    assert_eq!(results(&org, &id, &[]).await.status, 404);
}

#[tokio::test]
async fn the_fault_fails_the_next_query_jobs() {
    let org = Org::start().await;
    seed_accounts(&org, 3).await;
    let faults = org.faults(json!({"bulk_fail_query_jobs": 1})).await;
    assert_eq!(faults.body["bulk_fail_query_jobs"], 1);
    let failed = create_ok(&org, "SELECT Id FROM Account").await;
    let info = finished(&org, &failed).await;
    assert_eq!(info["state"], "Failed", "{info}");
    assert!(
        info["errorMessage"]
            .as_str()
            .unwrap()
            .contains("emulated fault"),
        "{info}"
    );
    let page = results(&org, &failed, &[]).await;
    assert_eq!(page.status, 412);
    assert!(error_of(&page).1.ends_with("Current status: FAILED"));
    let faults = org.admin(Method::GET, "/faults", None).await;
    assert_eq!(faults.body["bulk_fail_query_jobs"], 0);
    // The next job is not affected.
    let ok = create_ok(&org, "SELECT Id FROM Account").await;
    assert_eq!(finished(&org, &ok).await["state"], "JobComplete");
    assert_eq!(results(&org, &ok, &[]).await.count(), 3);
    assert_eq!(
        org.delete(&format!("/jobs/query/{failed}")).await.status,
        204
    );
}

#[tokio::test]
async fn calls_are_authenticated_counted_and_delayed_like_rest_calls() {
    let org = Org::start().await;
    org.account("Acme", "A-1").await;
    for (method, path) in [
        (reqwest::Method::POST, "/jobs/query"),
        (reqwest::Method::GET, "/jobs/query"),
        (
            reqwest::Method::GET,
            "/jobs/query/7505g0000000001AAA/results",
        ),
    ] {
        let r = org
            .http
            .request(method, format!("{}{V}{path}", org.base()))
            .json(&json!({"operation": "query", "query": "SELECT Id FROM Account"}))
            .send()
            .await
            .unwrap();
        let r = to_resp(r).await;
        assert_eq!(r.status, 401, "{path}: {}", r.body);
        assert_eq!(error_code(&r.body), "INVALID_SESSION_ID");
    }

    let before = org.stats().await;
    let id = create_ok(&org, "SELECT Id FROM Account").await;
    finished(&org, &id).await;
    assert_eq!(results(&org, &id, &[]).await.count(), 1);
    let list = org.get("/jobs/query").await;
    assert_eq!(list.status, 200);
    assert_eq!(list.body["done"], true);
    assert_eq!(list.body["nextRecordsUrl"], Value::Null);
    assert_eq!(list.body["records"][0]["id"], id.as_str());
    assert_eq!(list.body["records"][0]["jobType"], "V2Query");
    let stats = org.stats().await;
    let by_route = &stats["api_calls_by_route"];
    assert_eq!(by_route["POST /jobs/query"], 1);
    assert_eq!(by_route["GET /jobs/query"], 1);
    assert_eq!(by_route["GET /jobs/query/{id}/results"], 1);
    assert!(by_route["GET /jobs/query/{id}"].as_u64().unwrap() >= 1);
    assert_eq!(stats["bulk_query_jobs"], 1);
    assert!(
        stats["api_calls_total"].as_u64().unwrap()
            >= before["api_calls_total"].as_u64().unwrap() + 4
    );

    // Ingest and query jobs share the id space.
    let ingest = org
        .post(
            "/jobs/ingest",
            json!({"object": "Account", "operation": "insert"}),
        )
        .await;
    assert_eq!(ingest.status, 200, "{}", ingest.body);
    assert_ne!(ingest.body["id"], json!(id));

    // Injected latency holds these calls like any other.
    org.faults(json!({"latency_ms": 300})).await;
    let delayed = org.stats().await["delayed_requests"].as_u64().unwrap();
    let start = Instant::now();
    let page = results(&org, &id, &[]).await;
    assert_eq!(page.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(org.stats().await["delayed_requests"].as_u64().unwrap() > delayed);
}
