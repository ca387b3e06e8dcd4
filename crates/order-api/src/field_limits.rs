//! Refusing at intake what Salesforce could not hold exactly: the mapped fields' limits
//! (`orderbridge_mapping::Mapping::check_order`, the same check the sync worker makes before it
//! writes), applied to the order as its event will carry it. A 422 naming the field now beats a
//! dead letter later, and a value cut or rounded in Salesforce never happens.
//!
//! With several targets (divisions) the order is checked under its own target's mapping, and an
//! order no target takes (no routing rule matches, no default) is refused here, naming the
//! field the first rule reads, rather than dead-lettered later.
//!
//! The API never talks to Salesforce: the limits are the ones the mapping file declares, which
//! the worker (at start-up) and `sync-worker check-mapping --salesforce` verify against the
//! org's describe results.

use orderbridge_domain::{ClientScope, Order, Violations};
use orderbridge_mapping::Targets;

use crate::error::ApiError;

/// 422 with every value of `order` a mapped Salesforce field of its target could not hold, or
/// naming the field the routing rules read when no target takes the order.
pub fn check(targets: &Targets, order: &Order, client: &ClientScope) -> Result<(), ApiError> {
    let data = orderbridge_domain::events::submitted_data(order, Some(client));
    let mut v = Violations::default();
    let overflows = match targets.check_order(&data) {
        Ok(o) => o,
        Err(no_target) => {
            let (pointer, detail) = request_place(&no_target.pointer, no_target.to_string());
            v.push(&pointer, "no_target", detail);
            return Ok(v.into_result(())?);
        }
    };
    for o in overflows {
        let (pointer, detail) = request_place(&o.pointer, o.detail);
        v.push(&pointer, o.code, detail);
    }
    Ok(v.into_result(())?)
}

/// The request's place for a pointer into the stored order: computed amounts are named by the
/// input they come from (the total by `/lines`, a line total by its line).
fn request_place(pointer: &str, detail: String) -> (String, String) {
    if pointer == "/total" {
        return ("/lines".into(), format!("the order total {detail}"));
    }
    if let Some(line) = pointer
        .strip_prefix("/lines/")
        .and_then(|rest| rest.strip_suffix("/line_total"))
    {
        return (format!("/lines/{line}"), format!("the line total {detail}"));
    }
    if pointer == "/" {
        return (String::new(), detail);
    }
    (pointer.to_owned(), detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computed_amounts_point_at_their_inputs() {
        assert_eq!(request_place("/total", "x".into()).0, "/lines");
        assert_eq!(
            request_place("/lines/3/line_total", "x".into()).0,
            "/lines/3"
        );
        assert_eq!(
            request_place("/billing_address/city", "x".into()).0,
            "/billing_address/city"
        );
        assert_eq!(request_place("/", "x".into()).0, "");
    }
}
