//! What Salesforce holds for one order: its order record(s) and item records, found by external
//! id with two SOQL queries (the mapping names the objects and fields, as for `reconcile`).

use orderbridge_salesforce::Client;
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::reconcile::Objects;

/// One record as read.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub id: String,
    pub external_id: String,
    /// The order record's `Status`, when the object has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// The order's records in Salesforce.
#[derive(Debug, Clone, Serialize)]
pub struct Records {
    /// The order's target, when the mapping file has several (divisions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub order_object: String,
    /// More than one means the external-id field is not unique (see `reconcile`).
    pub orders: Vec<Record>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_object: Option<String>,
    pub items: Vec<Record>,
}

/// Reads the order's records. An order id is a UUID, so it needs no quoting beyond SOQL's
/// quotes, and `-` starts the items' `<order id>-<line>` keys.
pub async fn read(
    client: &Client,
    objects: &Objects,
    id: Uuid,
) -> Result<Records, orderbridge_salesforce::Error> {
    let order_soql = format!(
        "SELECT Id, Status, {field} FROM {object} WHERE {field} = '{id}'",
        field = objects.order_field,
        object = objects.order_object,
    );
    // `Status` exists on Order; a mapping to another object may have none, so fall back to
    // the ids alone rather than failing the whole look.
    let orders = match client.query::<Map<String, Value>>(&order_soql).await {
        Ok(page) => page.records,
        Err(_) => {
            let soql = format!(
                "SELECT Id, {field} FROM {object} WHERE {field} = '{id}'",
                field = objects.order_field,
                object = objects.order_object,
            );
            client.query::<Map<String, Value>>(&soql).await?.records
        }
    };
    let orders = orders
        .iter()
        .filter_map(|r| record(r, &objects.order_field))
        .collect();
    let items = match &objects.items {
        Some((object, field)) => {
            let soql = format!(
                "SELECT Id, {field} FROM {object} WHERE {field} LIKE '{id}-%' ORDER BY {field}"
            );
            client
                .query::<Map<String, Value>>(&soql)
                .await?
                .records
                .iter()
                .filter_map(|r| record(r, field))
                .collect()
        }
        None => Vec::new(),
    };
    Ok(Records {
        target: None,
        order_object: objects.order_object.clone(),
        orders,
        item_object: objects.items.as_ref().map(|(o, _)| o.clone()),
        items,
    })
}

fn record(r: &Map<String, Value>, field: &str) -> Option<Record> {
    // Salesforce answers with the field's canonical spelling (API names are case-insensitive).
    let external_id = r
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(field))
        .and_then(|(_, v)| v.as_str())?;
    Some(Record {
        id: r.get("Id").and_then(Value::as_str)?.to_owned(),
        external_id: external_id.to_owned(),
        status: r.get("Status").and_then(Value::as_str).map(str::to_owned),
    })
}
