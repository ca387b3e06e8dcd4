//! Seeding price books, products, price book entries and arbitrary records (`POST /__admin/seed`
//! and `SF_EMULATOR_SEED_FILE`), through the same validation as API writes; the document may also
//! carry Flow rules (`flows`, handled by the caller).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::reply::RecordError;
use crate::store::{Locks, Store};

/// The dev product catalogue (`config/sf-emulator-seed.json`: the products the README's
/// walk-through and the benchmarks order), built into the binary so `sf-emulator` run alone,
/// from any directory, has them.
pub const DEV_CATALOGUE: &str = include_str!("../../../config/sf-emulator-seed.json");

/// Seed document.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// Custom price books (any Pricebook2 fields; `Name` required).
    #[serde(default)]
    pub pricebooks: Vec<Map<String, Value>>,
    /// Products: Product2 fields plus `prices`, price book name → unit price. `Standard` (or the
    /// standard price book's name) is the standard price; when missing, the first price given
    /// is also used as the standard price, because Salesforce requires one before any other.
    #[serde(default)]
    pub products: Vec<Map<String, Value>>,
    /// Any other records: object name → list of bodies, as for a create.
    #[serde(default)]
    pub records: BTreeMap<String, Vec<Map<String, Value>>>,
    /// Flow rules (`POST /__admin/flows` bodies). In the seed file: the rules the org starts
    /// with, replacing the built-in one (`[]`: none). In `POST /__admin/seed`: added or replaced
    /// by name. Not applied by [`apply`] (records only).
    #[serde(default)]
    pub flows: Option<Vec<crate::flows::RuleInput>>,
}

fn context(e: RecordError, at: &str) -> RecordError {
    RecordError {
        message: format!("{at}: {}", e.message),
        ..e
    }
}

/// Applies a seed; returns the ids created.
pub fn apply(store: &mut Store, seed: &Seed) -> Result<Value, RecordError> {
    // Seeding is set-up, not traffic: injected lock faults do not apply.
    let mut locks = Locks::default();
    let standard = store.standard_pricebook_id();
    let mut books: BTreeMap<String, String> = BTreeMap::new();
    if let Some(id) = &standard {
        books.insert("standard".into(), id.clone());
        books.insert("standard price book".into(), id.clone());
    }
    let mut pricebooks_out = Map::new();
    for (i, pb) in seed.pricebooks.iter().enumerate() {
        let mut body = pb.clone();
        body.entry("IsActive").or_insert(json!(true));
        let id = store
            .create(&mut locks, "Pricebook2", &body)
            .map_err(|e| context(e, &format!("pricebooks[{i}]")))?;
        let name = pb
            .get("Name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        books.insert(name.to_lowercase(), id.clone());
        pricebooks_out.insert(name, json!(id));
    }
    let mut products_out = Map::new();
    for (i, p) in seed.products.iter().enumerate() {
        let at = format!("products[{i}]");
        let mut body = p.clone();
        let prices = body.remove("prices").unwrap_or(json!({}));
        let prices = prices.as_object().cloned().ok_or_else(|| {
            RecordError::new("INVALID_FIELD", format!("{at}: prices must be an object"))
        })?;
        body.entry("IsActive").or_insert(json!(true));
        let product_id = store
            .create(&mut locks, "Product2", &body)
            .map_err(|e| context(e, &at))?;
        let mut entries = Map::new();
        let mut ordered: Vec<(String, String, Value)> = Vec::new();
        for (book, price) in &prices {
            let book_id = books.get(&book.to_lowercase()).cloned().ok_or_else(|| {
                RecordError::new(
                    "INVALID_CROSS_REFERENCE_KEY",
                    format!("{at}: unknown price book '{book}'"),
                )
            })?;
            ordered.push((book.clone(), book_id, price.clone()));
        }
        // The standard price first, as Salesforce requires.
        ordered.sort_by_key(|(_, id, _)| Some(id) != standard.as_ref());
        if let (Some(std_id), Some((_, first_id, first_price))) = (&standard, ordered.first())
            && first_id != std_id
        {
            ordered.insert(
                0,
                (
                    "Standard Price Book".into(),
                    std_id.clone(),
                    first_price.clone(),
                ),
            );
        }
        for (book, book_id, price) in ordered {
            let entry = json!({"Pricebook2Id": book_id, "Product2Id": product_id, "UnitPrice": price, "IsActive": true});
            let entry = entry.as_object().cloned().unwrap_or_default();
            let id = store
                .create(&mut locks, "PricebookEntry", &entry)
                .map_err(|e| context(e, &format!("{at}.prices.{book}")))?;
            entries.insert(book, json!(id));
        }
        let key = p
            .get("ProductCode")
            .or_else(|| p.get("Name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        products_out.insert(key, json!({"Id": product_id, "entries": entries}));
    }
    let mut records_out = Map::new();
    for (obj, list) in &seed.records {
        let mut created = Vec::new();
        for (i, body) in list.iter().enumerate() {
            let id = store
                .create(&mut locks, obj, body)
                .map_err(|e| context(e, &format!("records.{obj}[{i}]")))?;
            created.push(json!(id));
        }
        records_out.insert(obj.clone(), Value::Array(created));
    }
    Ok(
        json!({"standardPricebookId": standard, "pricebooks": pricebooks_out, "products": products_out, "records": records_out}),
    )
}
