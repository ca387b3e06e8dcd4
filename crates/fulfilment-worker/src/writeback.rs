//! Writing a decided result back to the Salesforce order: one PATCH of the configured fields
//! (status value, and the reason or an empty error field). The client tags the call with
//! `Sforce-Call-Options: client=<SF_CLIENT_NAME>`, so the subscriber takes the change event it
//! causes for our own echo.

use orderbridge_domain::text;
use orderbridge_salesforce::{Client, Error, ErrorClass};
use serde_json::{Map, Value};

use crate::config::FulfilmentConfig;

/// Which result is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    Provisioned,
    Failed,
}

/// The configured fields and values.
#[derive(Debug, Clone)]
pub struct WriteBack {
    client: Client,
    status_field: String,
    error_field: String,
    error_max_chars: usize,
    provisioned: String,
    failed: String,
}

/// Why a write-back did not happen, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct WriteBackError {
    pub retryable: bool,
    /// The Salesforce error code (or the client's class) for the dead letter's header.
    pub code: String,
    #[source]
    pub source: Error,
}

impl WriteBack {
    pub fn new(client: Client, config: &FulfilmentConfig) -> Self {
        Self {
            client,
            status_field: config.sf_status_field.clone(),
            error_field: config.sf_error_field.clone(),
            error_max_chars: usize::try_from(config.sf_error_max_length).unwrap_or(usize::MAX),
            provisioned: config.sf_provisioned_value.clone(),
            failed: config.sf_failed_value.clone(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The record the PATCH sends.
    pub fn record(&self, result: Decided, reason: Option<&str>) -> Value {
        let mut record = Map::new();
        let (status, error) = match result {
            Decided::Provisioned => (&self.provisioned, Value::Null),
            Decided::Failed => (
                &self.failed,
                Value::String(
                    text::truncate(
                        reason.unwrap_or("provisioning failed"),
                        self.error_max_chars,
                    )
                    .to_owned(),
                ),
            ),
        };
        record.insert(self.status_field.clone(), Value::String(status.clone()));
        record.insert(self.error_field.clone(), error);
        Value::Object(record)
    }

    /// PATCHes the order.
    pub async fn write(
        &self,
        salesforce_id: &str,
        result: Decided,
        reason: Option<&str>,
    ) -> Result<(), WriteBackError> {
        let record = self.record(result, reason);
        self.client
            .update("Order", salesforce_id, &record)
            .await
            .map_err(|source| {
                let class = source.class();
                let code = source
                    .codes()
                    .first()
                    .map(|c| (*c).to_owned())
                    .unwrap_or_else(|| format!("{class:?}").to_uppercase());
                WriteBackError {
                    // Outages, locks, the API budget and a session that will come back are
                    // worth waiting for; a refused record or a wrong configuration is not.
                    retryable: matches!(
                        class,
                        ErrorClass::Retryable | ErrorClass::RateLimited | ErrorClass::Session
                    ),
                    code,
                    source,
                }
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::*;
    use crate::config::Cli;

    #[test]
    fn records_set_the_configured_fields_and_cut_the_reason() {
        let cli = Cli::parse_from([
            "fulfilment-worker",
            "--fulfilment-signing-secret",
            "whsec_dGVzdA==",
            "--sf-status-field",
            "Prov__c",
            "--sf-error-field",
            "Prov_Error__c",
            "--sf-error-max-length",
            "5",
        ]);
        let wb = WriteBack::new(Client::new(&cli.salesforce).unwrap(), &cli.fulfilment);
        assert_eq!(
            wb.record(Decided::Provisioned, None),
            serde_json::json!({"Prov__c": "Provisioned", "Prov_Error__c": null})
        );
        assert_eq!(
            wb.record(Decided::Failed, Some("no stock at all")),
            serde_json::json!({"Prov__c": "Failed", "Prov_Error__c": "no st"})
        );
    }
}
