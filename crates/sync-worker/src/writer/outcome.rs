//! Outcomes: what a record's result means (written, already written, refused and why) and each
//! order's result from the fates of its records.

use orderbridge_mapping::{ObjectMapping, WriteMode};
use orderbridge_salesforce::{ApiError, ErrorClass, RecordResult};

use super::{Failure, NO_ID, OrderResult, RecordFate};

pub(super) fn record_fate(record: &RecordResult, object: &ObjectMapping) -> RecordFate {
    if record.success {
        return RecordFate::Written(record.id.clone());
    }
    if let Some(existing) = already_exists(&record.errors, &object.external_id_field) {
        return match object.write {
            WriteMode::Create => RecordFate::Written(existing),
            // Two upserts of a new external id racing (two batches with the same new
            // customer): the loser's retry finds the record and updates it.
            WriteMode::Upsert => RecordFate::Refused(record.errors.clone(), ErrorClass::Retryable),
        };
    }
    let class = record
        .errors
        .iter()
        .map(ApiError::class)
        .find(|c| *c != ErrorClass::Permanent)
        .unwrap_or(ErrorClass::Permanent);
    RecordFate::Refused(record.errors.clone(), class)
}

/// A create refused because the external id is taken means the record was written before:
/// `DUPLICATE_VALUE` naming the external id field, with the existing id in the message
/// ("duplicate value found: External_Id__c duplicates value on record with id: 801…").
/// `Some(None)` when the id cannot be read from the message.
fn already_exists(errors: &[ApiError], external_id_field: &str) -> Option<Option<String>> {
    let e = errors.iter().find(|e| e.code == "DUPLICATE_VALUE")?;
    let names_field = e
        .fields
        .iter()
        .any(|f| f.eq_ignore_ascii_case(external_id_field))
        || e.message.to_ascii_lowercase().contains(&format!(
            "{} duplicates value",
            external_id_field.to_ascii_lowercase()
        ));
    if !names_field {
        return None;
    }
    let id = e
        .message
        .rsplit_once("with id: ")
        .map(|(_, id)| id.trim().trim_end_matches('.').to_owned())
        .filter(|id| {
            (15..=18).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric())
        });
    Some(id)
}

fn failure(what: &str, errors: &[ApiError], class: ErrorClass) -> Failure {
    let first = errors.first();
    Failure {
        retryable: matches!(
            class,
            ErrorClass::Retryable | ErrorClass::RateLimited | ErrorClass::Session
        ),
        code: first
            .map(|e| e.code.clone())
            .unwrap_or_else(|| "UNKNOWN".into()),
        message: format!(
            "{what}: {}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// One order's outcome from its records' fates: the first failure along account → order →
/// items decides, because later records fail as a consequence of earlier ones.
pub(super) fn decide(
    account: Option<Option<RecordFate>>,
    order: Option<RecordFate>,
    items: &[Option<RecordFate>],
    order_key: &str,
) -> OrderResult {
    let missing = |what: &str| {
        OrderResult::Failed(Failure {
            retryable: true,
            code: "NO_RESULT".into(),
            message: format!("Salesforce returned no result for the {what}"),
        })
    };
    // The account decides only when the order itself was not written (its refusal is then
    // most likely a consequence). An order written with all its items is synced even if the
    // account upsert was refused: it links to the existing account by external id.
    let account_failure = match account {
        Some(None) => Some(missing("account")),
        Some(Some(RecordFate::Refused(errors, class))) => {
            Some(OrderResult::Failed(failure("account", &errors, class)))
        }
        _ => None,
    };
    let order_id = match order {
        None => return account_failure.unwrap_or_else(|| missing("order")),
        Some(RecordFate::Refused(errors, class)) => {
            return account_failure
                .unwrap_or_else(|| OrderResult::Failed(failure("order", &errors, class)));
        }
        Some(RecordFate::Written(id)) => id,
    };
    if let Some(f) = &account_failure {
        tracing::warn!(order = order_key, account_error = ?f, "order written, but its account could not be updated");
    }
    for (n, item) in items.iter().enumerate() {
        match item {
            None => return missing("order item"),
            Some(RecordFate::Refused(errors, class)) => {
                return OrderResult::Failed(failure(
                    &format!("order item {}", n + 1),
                    errors,
                    *class,
                ));
            }
            Some(RecordFate::Written(_)) => {}
        }
    }
    match order_id {
        Some(id) => OrderResult::Synced { salesforce_id: id },
        None => OrderResult::Failed(Failure {
            retryable: true,
            code: NO_ID.into(),
            message: format!("order {order_key} was written but Salesforce did not say its id"),
        }),
    }
}
