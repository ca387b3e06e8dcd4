//! From the targets file (`WORKER_MAPPING_FILE`: a plain mapping is one target) to the
//! [`Router`] the worker writes with: each target's Salesforce client (its own `SF_<NAME>_*`
//! settings over `SF_*`), its mapping checked against its org, its price book, its metrics.
//!
//! `main` and the tests build the worker through here, so what a test runs is what starts.

use std::sync::Arc;

use orderbridge_mapping::{Problems, Targets, check_against_salesforce};
use orderbridge_salesforce::{Client, SalesforceConfig, TargetSettingsError};

use crate::metrics::Metrics;
use crate::pricebook::PriceBook;
use crate::writer::{Router, Writer};

/// A target whose Salesforce settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("target {target}: {source}")]
    Settings {
        target: String,
        #[source]
        source: TargetSettingsError,
    },
    #[error("target {target}: {source}")]
    Client {
        target: String,
        #[source]
        source: Box<orderbridge_salesforce::Error>,
    },
}

/// Each target's Salesforce client, in the order of `targets.targets()`. `lookup` reads an
/// environment variable (the binaries pass `std::env::var`); targets that share settings
/// share one client (one session, one API-usage reading).
pub fn clients(
    base: &SalesforceConfig,
    targets: &Targets,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Client>, TargetError> {
    let default = Client::new(base).map_err(|source| TargetError::Client {
        target: "(SF_*)".into(),
        source: Box::new(source),
    })?;
    let mut own: Vec<(String, Client)> = Vec::new();
    let mut out = Vec::with_capacity(targets.targets().len());
    for target in targets.targets() {
        let Some(prefix) = &target.salesforce else {
            out.push(default.clone());
            continue;
        };
        if let Some((_, c)) = own.iter().find(|(p, _)| p == prefix) {
            out.push(c.clone());
            continue;
        }
        let config = base
            .for_target(prefix, lookup)
            .map_err(|source| TargetError::Settings {
                target: target.name.clone(),
                source,
            })?;
        let client = Client::new(&config).map_err(|source| TargetError::Client {
            target: target.name.clone(),
            source: Box::new(source),
        })?;
        own.push((prefix.clone(), client.clone()));
        out.push(client);
    }
    Ok(out)
}

/// Every target's mapping against its own org's describe results; the problems name the
/// target (`target emea: order.fields: Case has no field Division__c`).
pub async fn check(
    targets: &Targets,
    clients: &[Client],
) -> Result<Problems, orderbridge_salesforce::Error> {
    let mut problems = Problems::default();
    let single = targets.targets().len() == 1;
    for (target, client) in targets.targets().iter().zip(clients) {
        let found = check_against_salesforce(client, &target.mapping).await?;
        problems.0.extend(found.0.into_iter().map(|p| {
            if single {
                p
            } else {
                format!("target {}: {p}", target.name)
            }
        }));
    }
    Ok(problems)
}

/// The router: per target a writer with its client, mapping, price book (`pricebook`, when
/// set, replaces every target's) and a metrics observer labelled with its name.
pub fn router(
    targets: Arc<Targets>,
    clients: Vec<Client>,
    pricebook: Option<&str>,
    metrics: &Arc<Metrics>,
) -> Router {
    let writers = targets
        .targets()
        .iter()
        .zip(clients)
        .map(|(target, client)| {
            let name = pricebook
                .map(str::to_owned)
                .or_else(|| target.mapping.pricebook.clone());
            let pricebook = Arc::new(PriceBook::new(client.clone(), name));
            Writer::new(
                client,
                target.mapping.clone(),
                pricebook,
                metrics.target_observer(&target.name),
            )
        })
        .collect();
    let observer: Arc<dyn crate::writer::CallObserver> = metrics.clone();
    Router::new(targets, writers, observer)
}
