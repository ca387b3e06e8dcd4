//! The order model, in three stages:
//!
//! - [`NewOrderRequest`]: what a client sends, deserialized as-is (strings stay strings).
//! - [`NewOrder`]: what survives [`NewOrder::parse`]. Holding one proves every rule held, so
//!   nothing downstream re-validates.
//! - [`Order`]: the stored order as the API returns it and as events carry it.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::currency::Currency;
use crate::ids::OrderId;
use crate::validation::Violations;

/// Most lines one order may carry.
pub const MAX_LINES: usize = 500;
/// Largest quantity on one line; keeps line totals far from any overflow.
pub const MAX_QUANTITY: i64 = 1_000_000;
/// Most integer digits of a unit price (Salesforce currency fields hold 18 digits in all).
const MAX_PRICE_INTEGER_DIGITS: usize = 12;

/// The caller's customer, as the caller knows them: stored with the order and carried by its
/// events. Unknown fields are ignored when reading one back (a newer writer may add fields);
/// the request's [`CustomerInput`] refuses them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, JsonSchema)]
#[schemars(description = "The caller's customer, as the caller knows them.")]
pub struct Customer {
    /// The caller's own customer key. In Salesforce it is scoped by the API client (the
    /// client's external-id prefix comes first), so two clients' `CUST-42` are two accounts.
    #[schema(example = "CUST-42", min_length = 1, max_length = 64)]
    pub external_id: String,
    #[schema(example = "Acme GmbH", min_length = 1, max_length = 255)]
    pub name: String,
    #[schema(example = "buyer@acme.example", max_length = 254)]
    pub email: String,
    #[serde(default)]
    #[schema(example = "+49 30 1234567", max_length = 40)]
    pub phone: Option<String>,
}

/// A postal address, as stored and carried by events; unknown fields are ignored on read, as
/// in [`Customer`]. The request's [`AddressInput`] refuses them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, JsonSchema)]
#[schemars(description = "A postal address.")]
pub struct Address {
    #[schema(example = "Hauptstraße 1", min_length = 1, max_length = 255)]
    pub line1: String,
    #[serde(default)]
    #[schema(max_length = 255)]
    pub line2: Option<String>,
    #[schema(example = "Berlin", min_length = 1, max_length = 100)]
    pub city: String,
    #[serde(default)]
    #[schema(example = "10115", max_length = 20)]
    pub postal_code: Option<String>,
    #[serde(default)]
    #[schema(example = "BE", max_length = 100)]
    pub region: Option<String>,
    /// ISO 3166-1 alpha-2 country code.
    #[schema(example = "DE", pattern = "^[A-Z]{2}$")]
    #[schemars(pattern(r"^[A-Z]{2}$"))]
    pub country: String,
}

/// The customer as submitted. Unknown fields are refused, as everywhere in the request: a
/// misspelt optional field (`phnoe`) would otherwise be dropped without a word.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerInput {
    /// The caller's own customer key. In Salesforce it is scoped by the API client (the
    /// client's external-id prefix comes first), so two clients' `CUST-42` are two accounts.
    #[schema(example = "CUST-42", min_length = 1, max_length = 64)]
    pub external_id: String,
    #[schema(example = "Acme GmbH", min_length = 1, max_length = 255)]
    pub name: String,
    #[schema(example = "buyer@acme.example", max_length = 254)]
    pub email: String,
    #[serde(default)]
    #[schema(example = "+49 30 1234567", max_length = 40)]
    pub phone: Option<String>,
}

impl From<CustomerInput> for Customer {
    fn from(c: CustomerInput) -> Self {
        Self {
            external_id: c.external_id,
            name: c.name,
            email: c.email,
            phone: c.phone,
        }
    }
}

/// A postal address as submitted; unknown fields are refused, as in [`CustomerInput`].
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressInput {
    #[schema(example = "Hauptstraße 1", min_length = 1, max_length = 255)]
    pub line1: String,
    #[serde(default)]
    #[schema(max_length = 255)]
    pub line2: Option<String>,
    #[schema(example = "Berlin", min_length = 1, max_length = 100)]
    pub city: String,
    #[serde(default)]
    #[schema(example = "10115", max_length = 20)]
    pub postal_code: Option<String>,
    #[serde(default)]
    #[schema(example = "BE", max_length = 100)]
    pub region: Option<String>,
    /// An assigned ISO 3166-1 alpha-2 country code (`GB`, not `UK`).
    #[schema(schema_with = country_schema)]
    pub country: String,
}

impl From<AddressInput> for Address {
    fn from(a: AddressInput) -> Self {
        Self {
            line1: a.line1,
            line2: a.line2,
            city: a.city,
            postal_code: a.postal_code,
            region: a.region,
            country: a.country,
        }
    }
}

/// The country field's schema: the assigned codes as an `enum`, so clients and generated tests
/// see exactly what is accepted.
fn country_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(
            "An assigned ISO 3166-1 alpha-2 country code (`GB`, not `UK`).",
        ))
        .enum_values(Some(crate::country::COUNTRIES))
        .examples(["DE"])
        .build()
}

/// One order line as submitted.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineInput {
    /// Product code; matched against `ProductCode` in the Salesforce price book.
    #[schema(example = "SKU-RED-MUG", min_length = 1, max_length = 64)]
    pub sku: String,
    #[schema(example = "Red mug", min_length = 1, max_length = 255)]
    pub name: String,
    /// A whole number: `2`, not `2.0` or `2e0`.
    #[schema(value_type = i64, example = 2, minimum = 1, maximum = 1_000_000)]
    pub quantity: serde_json::Number,
    /// Decimal string, at least 0, with no more decimals than the currency has minor units.
    /// A string, not a JSON number, so no float ever touches money.
    #[schema(example = "12.50", pattern = r"^\d{1,12}(\.\d{1,4})?$")]
    pub unit_price: String,
}

/// The body of `POST /v1/orders`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrderRequest {
    /// The caller's own order number; unique per API client.
    #[schema(example = "PO-2026-0001", min_length = 1, max_length = 64)]
    pub client_ref: String,
    pub customer: CustomerInput,
    #[serde(default)]
    pub billing_address: Option<AddressInput>,
    #[serde(default)]
    pub shipping_address: Option<AddressInput>,
    /// ISO 4217 currency code.
    #[schema(example = "EUR", pattern = "^[A-Z]{3}$")]
    pub currency: String,
    #[schema(min_items = 1, max_items = 500)]
    pub lines: Vec<LineInput>,
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub notes: Option<String>,
}

/// A validated order line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLine {
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    pub unit_price: Decimal,
}

/// A validated order, ready to be stored. Only [`NewOrder::parse`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub client_ref: String,
    pub customer: Customer,
    pub billing_address: Option<Address>,
    pub shipping_address: Option<Address>,
    pub currency: Currency,
    pub lines: Vec<NewLine>,
    pub notes: Option<String>,
    total: Decimal,
}

impl NewOrder {
    /// Checks every rule and reports all broken ones together.
    pub fn parse(req: NewOrderRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let customer = Customer::from(req.customer);
        let billing_address = req.billing_address.map(Address::from);
        let shipping_address = req.shipping_address.map(Address::from);
        v.text("/client_ref", &req.client_ref, 64);
        check_customer(&mut v, &customer);
        if let Some(a) = &billing_address {
            check_address(&mut v, "/billing_address", a);
        }
        if let Some(a) = &shipping_address {
            check_address(&mut v, "/shipping_address", a);
        }
        if let Some(notes) = &req.notes {
            v.optional_text("/notes", notes, 2000);
        }
        let currency = Currency::parse(&req.currency);
        if currency.is_none() {
            v.push(
                "/currency",
                "unknown_currency",
                format!("`{}` is not an active ISO 4217 currency code", req.currency),
            );
        }
        if req.lines.is_empty() || req.lines.len() > MAX_LINES {
            v.push(
                "/lines",
                "out_of_range",
                format!("must hold 1 to {MAX_LINES} lines, got {}", req.lines.len()),
            );
        }

        let mut lines = Vec::with_capacity(req.lines.len());
        for (i, line) in req.lines.into_iter().enumerate() {
            let at = format!("/lines/{i}");
            v.text(&format!("{at}/sku"), &line.sku, 64);
            v.text(&format!("{at}/name"), &line.name, 255);
            // A JSON integer only: `2.0` and `1e20` are numbers JSON Schema might call integral,
            // but they reach us as floats, and a float is never a quantity.
            let quantity = match line.quantity.as_i64() {
                Some(q) if (1..=MAX_QUANTITY).contains(&q) => u32::try_from(q).unwrap_or(0),
                _ => {
                    v.push(
                        &format!("{at}/quantity"),
                        "out_of_range",
                        format!(
                            "must be a whole number from 1 to {MAX_QUANTITY} written without a decimal point or exponent, got {}",
                            line.quantity
                        ),
                    );
                    0
                }
            };
            let unit_price = match parse_price(&line.unit_price, currency) {
                Ok(p) => p,
                Err((code, detail)) => {
                    v.push(&format!("{at}/unit_price"), code, detail);
                    Decimal::ZERO
                }
            };
            lines.push(NewLine {
                sku: line.sku,
                name: line.name,
                quantity,
                unit_price,
            });
        }

        let Some(currency) = currency else {
            return Err(v);
        };
        if !v.is_empty() {
            return Err(v);
        }
        // Bounds above keep this far below Decimal's 28 digits: 500 × 10^6 × 10^12.
        let total = lines
            .iter()
            .map(|l| Decimal::from(l.quantity) * l.unit_price)
            .sum::<Decimal>();
        Ok(Self {
            client_ref: req.client_ref,
            customer,
            billing_address,
            shipping_address,
            total: with_scale(total, currency),
            currency,
            lines,
            notes: req.notes,
        })
    }

    /// The exact order total, at the currency's minor units.
    pub fn total(&self) -> Decimal {
        self.total
    }

    /// The order as it is first stored: `submitted`, sync `pending`, version 1.
    pub fn into_order(self, id: impl Into<OrderId>, now: DateTime<Utc>) -> Order {
        let id = id.into();
        let currency = self.currency;
        let lines = self
            .lines
            .into_iter()
            .zip(1..)
            .map(|(l, line_number)| OrderLine {
                line_number,
                line_total: with_scale(Decimal::from(l.quantity) * l.unit_price, currency),
                unit_price: with_scale(l.unit_price, currency),
                sku: l.sku,
                name: l.name,
                quantity: l.quantity,
            })
            .collect();
        Order {
            id,
            client_ref: self.client_ref,
            customer: self.customer,
            billing_address: self.billing_address,
            shipping_address: self.shipping_address,
            currency: currency.code().to_owned(),
            lines,
            notes: self.notes,
            total: self.total,
            status: OrderStatus::SUBMITTED.to_owned(),
            sync: SyncInfo::default(),
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }
}

fn with_scale(mut amount: Decimal, currency: Currency) -> Decimal {
    amount.rescale(currency.minor_units());
    amount
}

fn check_customer(v: &mut Violations, c: &Customer) {
    v.text("/customer/external_id", &c.external_id, 64);
    v.text("/customer/name", &c.name, 255);
    if !is_plausible_email(&c.email) {
        v.push(
            "/customer/email",
            "invalid_email",
            "must be an email address such as name@example.com",
        );
    }
    if let Some(phone) = &c.phone {
        let ok = (1..=40).contains(&phone.chars().count())
            && phone.chars().any(|ch| ch.is_ascii_digit())
            && phone
                .chars()
                .all(|ch| ch.is_ascii_digit() || " +-().".contains(ch));
        if !ok {
            v.push(
                "/customer/phone",
                "invalid_phone",
                "must be at most 40 characters of digits, spaces and + - ( ) .",
            );
        }
    }
}

fn check_address(v: &mut Violations, at: &str, a: &Address) {
    v.text(&format!("{at}/line1"), &a.line1, 255);
    if let Some(line2) = &a.line2 {
        v.optional_text(&format!("{at}/line2"), line2, 255);
    }
    v.text(&format!("{at}/city"), &a.city, 100);
    if let Some(postal_code) = &a.postal_code {
        v.optional_text(&format!("{at}/postal_code"), postal_code, 20);
    }
    if let Some(region) = &a.region {
        v.optional_text(&format!("{at}/region"), region, 100);
    }
    if !crate::country::is_country(&a.country) {
        v.push(
            &format!("{at}/country"),
            "invalid_country",
            format!(
                "`{}` is not an assigned ISO 3166-1 alpha-2 code (such as DE, or GB for the United Kingdom)",
                crate::text::truncate(&a.country, 8)
            ),
        );
    }
}

/// Deliberately modest: one `@`, a non-empty local part, a dotted domain, no spaces. Whether the
/// mailbox exists is not ours to decide.
fn is_plausible_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    email.len() <= 254
        && !local.is_empty()
        && local.len() <= 64
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Parses a price strictly: digits, an optional dot and decimals, nothing else (no sign,
/// exponent, spaces or thousands separators), then checks the decimals against the currency.
fn parse_price(raw: &str, currency: Option<Currency>) -> Result<Decimal, (&'static str, String)> {
    let (int, frac) = raw.split_once('.').unwrap_or((raw, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if raw.starts_with('-') {
        return Err(("out_of_range", "must be at least 0".into()));
    }
    if int.is_empty() || !digits(int) || !digits(frac) || (raw.contains('.') && frac.is_empty()) {
        return Err((
            "invalid_decimal",
            format!("`{raw}` is not a decimal string such as \"12.50\""),
        ));
    }
    if int.trim_start_matches('0').len() > MAX_PRICE_INTEGER_DIGITS {
        return Err((
            "out_of_range",
            format!("must be below 10^{MAX_PRICE_INTEGER_DIGITS}"),
        ));
    }
    if let Some(c) = currency
        && frac.len() > c.minor_units() as usize
    {
        return Err((
            "too_many_decimals",
            format!(
                "{c} has {} minor unit(s); `{raw}` has {} decimals",
                c.minor_units(),
                frac.len()
            ),
        ));
    }
    Decimal::from_str(raw).map_err(|e| ("invalid_decimal", e.to_string()))
}

/// A stored order line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct OrderLine {
    /// 1-based position in the order; with the order id it forms the line's external id.
    #[schema(example = 1)]
    pub line_number: u32,
    #[schema(example = "SKU-RED-MUG")]
    pub sku: String,
    #[schema(example = "Red mug")]
    pub name: String,
    #[schema(example = 2)]
    pub quantity: u32,
    #[schema(value_type = String, example = "12.50")]
    #[schemars(schema_with = "crate::contracts::decimal_string")]
    pub unit_price: Decimal,
    /// `quantity × unit_price`, exact.
    #[schema(value_type = String, example = "25.00")]
    #[schemars(schema_with = "crate::contracts::decimal_string")]
    pub line_total: Decimal,
}

/// Business status names. Salesforce owns the status after creation, so any string it reports
/// is kept; these are the ones orderbridge itself sets.
pub struct OrderStatus;

impl OrderStatus {
    pub const SUBMITTED: &'static str = "submitted";
}

/// Where an order is on its way to Salesforce.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    /// Stored, its event not yet on the broker.
    #[default]
    Pending,
    /// On the broker, waiting for the sync worker.
    Published,
    /// A Salesforce write failed in a way that may pass later; a retry is scheduled.
    Retrying,
    /// Written to Salesforce.
    Synced,
    /// Given up; `last_error` says why.
    Failed,
}

impl SyncState {
    pub const ALL: [SyncState; 5] = [
        Self::Pending,
        Self::Published,
        Self::Retrying,
        Self::Synced,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Published => "published",
            Self::Retrying => "retrying",
            Self::Synced => "synced",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for SyncState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a [`SyncState`].
#[derive(Debug, thiserror::Error)]
#[error("unknown sync state `{0}`")]
pub struct UnknownSyncState(pub String);

impl FromStr for SyncState {
    type Err = UnknownSyncState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownSyncState(s.to_owned()))
    }
}

/// Why the last sync attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct SyncError {
    #[schema(example = "UNABLE_TO_LOCK_ROW")]
    pub code: String,
    #[schema(example = "unable to obtain exclusive access to this record")]
    pub message: String,
}

/// The integration state of an order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct SyncInfo {
    pub state: SyncState,
    /// The Salesforce Order id once synced.
    #[schema(example = "801xx000003GZ8bAAG")]
    pub salesforce_id: Option<String>,
    /// Salesforce write attempts so far.
    pub attempts: i32,
    pub last_error: Option<SyncError>,
    pub synced_at: Option<DateTime<Utc>>,
}

/// An order as stored, returned by the API and carried by events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct Order {
    /// Server-assigned UUIDv7 (time-ordered).
    #[schema(value_type = Uuid)]
    pub id: OrderId,
    #[schema(example = "PO-2026-0001")]
    pub client_ref: String,
    pub customer: Customer,
    pub billing_address: Option<Address>,
    pub shipping_address: Option<Address>,
    #[schema(example = "EUR")]
    #[schemars(pattern(r"^[A-Z]{3}$"), description = "ISO 4217 currency code.")]
    pub currency: String,
    pub lines: Vec<OrderLine>,
    pub notes: Option<String>,
    /// Sum of the line totals, exact, at the currency's minor units.
    #[schema(value_type = String, example = "25.00")]
    #[schemars(schema_with = "crate::contracts::decimal_string")]
    pub total: Decimal,
    /// Business status: `submitted` at creation, then mirrored from Salesforce.
    #[schema(example = "submitted")]
    pub status: String,
    pub sync: SyncInfo,
    /// Increases with every change; events with a lower version are stale.
    #[schema(example = 1)]
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
