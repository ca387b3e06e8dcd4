//! Rules of the standard objects an order integration runs into: price book entries (one per
//! product and price book, a standard price first), orders and their lines (a line's entry must
//! be in the order's price book, its product and total are derived, the order's total rolls up,
//! deleting an order deletes its lines), and the standard price book that cannot be deleted.
//!
//! They are kept apart from the generic checks (`validate`) because they are Salesforce's
//! behaviour for particular objects, not something the schema file can express.

use serde_json::{Value, json};

use crate::reply::RecordError;
use crate::schema::ObjectDef;

use super::fields::Mode;
use super::records::{Record, Store, Undo};

impl Store {
    /// Rules of standard objects that an order integration runs into.
    pub(super) fn object_rules(
        &self,
        def: &ObjectDef,
        id: Option<&str>,
        rec: &Record,
        mode: Mode,
    ) -> Result<(), RecordError> {
        let str_of = |r: &Record, f: &str| r.get(f).and_then(Value::as_str).map(str::to_owned);
        match def.name.as_str() {
            "PricebookEntry" if mode == Mode::Insert => {
                let (Some(pb), Some(product)) =
                    (str_of(rec, "Pricebook2Id"), str_of(rec, "Product2Id"))
                else {
                    return Ok(());
                };
                let existing: Vec<&Record> = self
                    .records("PricebookEntry")
                    .filter(|(other, _)| Some(other.as_str()) != id)
                    .map(|(_, r)| r)
                    .filter(|r| str_of(r, "Product2Id").as_deref() == Some(product.as_str()))
                    .collect();
                if existing
                    .iter()
                    .any(|r| str_of(r, "Pricebook2Id").as_deref() == Some(pb.as_str()))
                {
                    return Err(RecordError::new(
                        "DUPLICATE_VALUE",
                        "This price definition already exists in this price book",
                    ));
                }
                let standard = self.standard_pricebook_id();
                if standard.as_deref() != Some(pb.as_str())
                    && !existing
                        .iter()
                        .any(|r| str_of(r, "Pricebook2Id") == standard)
                {
                    return Err(RecordError::new(
                        "STANDARD_PRICE_NOT_DEFINED",
                        "No standard price defined for this product",
                    ));
                }
                Ok(())
            }
            "OrderItem" if mode == Mode::Insert => {
                let (Some(order_id), Some(pbe_id)) =
                    (str_of(rec, "OrderId"), str_of(rec, "PricebookEntryId"))
                else {
                    return Ok(());
                };
                let order_pb = self
                    .get(Some("Order"), &order_id)
                    .ok()
                    .and_then(|(_, o)| str_of(o, "Pricebook2Id"));
                let entry_pb = self
                    .get(Some("PricebookEntry"), &pbe_id)
                    .ok()
                    .and_then(|(_, e)| str_of(e, "Pricebook2Id"));
                if order_pb.is_none() || order_pb != entry_pb {
                    return Err(RecordError::new(
                        "FIELD_INTEGRITY_EXCEPTION",
                        "field integrity exception: PricebookEntryId (pricebook entry is in a different pricebook than the one assigned to the order, or Order has no pricebook assigned)",
                    )
                    .with_fields(vec!["PricebookEntryId".into()]));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Values derived from other records or fields (OrderItem.Product2Id from its price book
    /// entry, OrderItem.TotalPrice = Quantity × UnitPrice).
    pub(super) fn derive(&self, def: &ObjectDef, rec: &mut Record) -> Result<(), RecordError> {
        if def.name == "OrderItem" && def.field("TotalPrice").is_some() {
            let total = line_total(rec);
            rec.insert("TotalPrice", json!(total));
        }
        if def.name == "OrderItem"
            && let Some(pbe) = rec.get("PricebookEntryId").and_then(Value::as_str)
            && let Ok((_, entry)) = self.get(Some("PricebookEntry"), pbe)
            && let Some(product) = entry.get("Product2Id").cloned()
        {
            match rec.get("Product2Id") {
                Some(given) if !given.is_null() && *given != product => {
                    return Err(RecordError::new(
                        "FIELD_INTEGRITY_EXCEPTION",
                        "field integrity exception: Product2Id does not match the price book entry's product",
                    )
                    .with_fields(vec!["Product2Id".into()]));
                }
                _ => {
                    rec.insert("Product2Id", product);
                }
            }
        }
        Ok(())
    }

    /// Keeps `Order.TotalAmount` equal to the sum of its lines' `TotalPrice`, as Salesforce's
    /// roll-up does; incremental, so bulk loads stay linear.
    pub(super) fn add_to_order_total(&mut self, order_id: &str, delta: f64) {
        if delta == 0.0
            || self
                .schema
                .object("Order")
                .and_then(|o| o.field("TotalAmount"))
                .is_none()
        {
            return;
        }
        // In place: TotalAmount is not indexed, so only the undo log needs the old version
        // (copying the whole order for every line made bulk loads allocation-bound).
        let in_transaction = self.depth > 0;
        let Some(order) = self
            .data
            .tables
            .get_mut("Order")
            .and_then(|t| t.get_mut(order_id))
        else {
            return;
        };
        let old = in_transaction.then(|| order.clone());
        let current = order
            .get("TotalAmount")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        // Currency: keep cents exact despite binary floating point.
        let total = ((current + delta) * 100.0).round() / 100.0;
        order.insert("TotalAmount", json!(total));
        if let Some(old) = old {
            self.journal.push(Undo::Replaced {
                obj: "Order".to_owned(),
                id: order_id.to_owned(),
                old,
            });
        }
    }

    /// The standard price book belongs to the org (`ENTITY_IS_LOCKED`).
    pub(super) fn check_deletable(&self, obj: &str, id: &str) -> Result<(), RecordError> {
        if obj == "Pricebook2" && self.standard_pricebook_id().as_deref() == Some(id) {
            return Err(RecordError::new(
                "ENTITY_IS_LOCKED",
                "the standard price book cannot be deleted",
            ));
        }
        Ok(())
    }

    /// What deleting `old` (of `obj`, id `id`) does to other records: an order line leaves its
    /// order's total; an order takes its lines with it.
    pub(super) fn after_delete(&mut self, obj: &str, id: &str, old: Option<Record>) {
        match obj {
            "OrderItem" => {
                if let Some(old) = old
                    && let Some(order) = old.get("OrderId").and_then(Value::as_str)
                {
                    self.add_to_order_total(order, -line_total(&old));
                }
            }
            // Order products are details of their order: deleting the order deletes them.
            "Order" => {
                let lines: Vec<String> = self
                    .records("OrderItem")
                    .filter(|(_, r)| r.get("OrderId").and_then(Value::as_str) == Some(id))
                    .map(|(line, _)| line.clone())
                    .collect();
                for line in lines {
                    self.remove("OrderItem", &line);
                }
            }
            _ => {}
        }
    }
}

/// Quantity × UnitPrice of an order line, in cents-exact currency.
pub(super) fn line_total(rec: &Record) -> f64 {
    let q = rec.get("Quantity").and_then(Value::as_f64).unwrap_or(0.0);
    let p = rec.get("UnitPrice").and_then(Value::as_f64).unwrap_or(0.0);
    ((q * p) * 100.0).round() / 100.0
}
