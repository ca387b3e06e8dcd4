//! One ingest job: what it writes, its state machine and its rows' outcomes.
//!
//! ```text
//!  Open ──PUT batches (once)──► Open ──PATCH UploadComplete──► UploadComplete ──► InProgress ──► JobComplete
//!    │                            │                                                   └──────► Failed
//!    └──PATCH Aborted─────────────┴──────────────────────────────────────────────────────────► Aborted
//! ```

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// The job's state, spelled as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Open,
    UploadComplete,
    InProgress,
    JobComplete,
    Failed,
    Aborted,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "Open",
            Self::UploadComplete => "UploadComplete",
            Self::InProgress => "InProgress",
            Self::JobComplete => "JobComplete",
            Self::Failed => "Failed",
            Self::Aborted => "Aborted",
        }
    }

    /// No more processing will happen: results are final and the job may be deleted.
    pub fn is_final(self) -> bool {
        matches!(self, Self::JobComplete | Self::Failed | Self::Aborted)
    }
}

/// What the job does with each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Insert,
    Upsert,
    Update,
    Delete,
}

impl Operation {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "insert" => Self::Insert,
            "upsert" => Self::Upsert,
            "update" => Self::Update,
            "delete" => Self::Delete,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Insert => "insert",
            Self::Upsert => "upsert",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

/// What became of one row.
#[derive(Debug, Clone)]
pub enum RowOutcome {
    Written {
        id: String,
        created: bool,
    },
    /// `sf__Error` as Salesforce writes it: `CODE:message:fields --`.
    Failed {
        id: Option<String>,
        error: String,
    },
}

/// One ingest job.
#[derive(Debug)]
pub struct Job {
    pub id: String,
    pub object: String,
    pub operation: Operation,
    pub external_id_field: Option<String>,
    pub api_version: String,
    /// `Sforce-Call-Options: client=` of the call that created the job: the change events of
    /// its rows name it in `changeOrigin`, as a REST write's do.
    pub client: Option<String>,
    pub state: JobState,
    pub created: DateTime<Utc>,
    pub modified: DateTime<Utc>,
    pub error_message: Option<String>,
    /// The uploaded CSV's header and rows (kept for the result files, which repeat them).
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Set once data has been uploaded (a job takes one upload).
    pub uploaded: bool,
    /// One per processed row, in row order; rows past the end were not processed.
    pub outcomes: Vec<RowOutcome>,
    pub processing_started: Option<std::time::Instant>,
    pub processing_ms: u64,
    /// An injected fault: the job fails once this many rows are processed.
    pub fail_after: Option<usize>,
}

impl Job {
    pub fn failed_count(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o, RowOutcome::Failed { .. }))
            .count()
    }

    /// The job info document (`GET /jobs/ingest/{id}`).
    pub fn info(&self, user_id: &str) -> Value {
        let stamp = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string();
        let mut v = json!({
            "id": self.id,
            "operation": self.operation.as_str(),
            "object": self.object,
            "createdById": user_id,
            "createdDate": stamp(self.created),
            "systemModstamp": stamp(self.modified),
            "state": self.state.as_str(),
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": self.api_version.parse::<f64>().unwrap_or(62.0),
            "jobType": "V2Ingest",
            "lineEnding": "LF",
            "columnDelimiter": "COMMA",
            "numberRecordsProcessed": self.outcomes.len(),
            "numberRecordsFailed": self.failed_count(),
            "retries": 0,
            "totalProcessingTime": self.processing_ms,
            "apiActiveProcessingTime": self.processing_ms,
            "apexProcessingTime": 0,
        });
        if let Some(m) = v.as_object_mut() {
            if let Some(f) = &self.external_id_field {
                m.insert("externalIdFieldName".into(), json!(f));
            }
            if self.state == JobState::Open {
                m.insert(
                    "contentUrl".into(),
                    json!(format!(
                        "services/data/v{}/jobs/ingest/{}/batches",
                        self.api_version, self.id
                    )),
                );
            }
            if let Some(e) = &self.error_message {
                m.insert("errorMessage".into(), json!(e));
            }
        }
        v
    }
}
