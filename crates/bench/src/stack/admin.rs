//! What the bench reads from and tells the running services, once they are up: the
//! emulator's admin API (latency, faults, call counters), the services' Prometheus metrics and
//! their memory in /proc. Separate from starting them (`process.rs`) because every suite reads
//! these figures, while only the harness starts processes.

use std::fs;

use anyhow::{Result, anyhow, bail};
use serde_json::Value;

use super::Stack;
use crate::procfs;

impl Stack {
    pub fn emulator(&self) -> Result<&str> {
        self.emulator_url
            .as_deref()
            .ok_or_else(|| anyhow!("the emulator is not running"))
    }

    /// Merges `faults` into the emulator's fault settings (`POST /__admin/faults`).
    pub async fn set_faults(&self, faults: Value) -> Result<()> {
        let resp = self
            .http
            .post(format!("{}/__admin/faults", self.emulator()?))
            .json(&faults)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("emulator refused faults {faults}: {}", resp.status());
        }
        Ok(())
    }

    /// Tells the fulfilment receiver how to answer from now on (`POST /__admin/behaviour`).
    pub async fn set_receiver_behaviour(&self, behaviour: Value) -> Result<()> {
        let receiver = self
            .receiver_url
            .as_deref()
            .ok_or_else(|| anyhow!("the fulfilment receiver is not running"))?;
        let resp = self
            .http
            .post(format!("{receiver}/__admin/behaviour"))
            .json(&behaviour)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("receiver refused behaviour {behaviour}: {}", resp.status());
        }
        Ok(())
    }

    /// The emulator's counters (`GET /__admin/stats`).
    pub async fn emulator_stats(&self) -> Result<Value> {
        Ok(self
            .http
            .get(format!("{}/__admin/stats", self.emulator()?))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Each running service's Prometheus metrics (every one with an admin port),
    /// also saved as `metrics-<service>.txt` in the output directory.
    pub async fn scrape_metrics(&self) -> Vec<(String, String)> {
        let mut scraped = Vec::new();
        for svc in &self.services {
            let Some(base) = svc.ready_url.strip_suffix("/health/ready") else {
                continue;
            };
            let text = match self.http.get(format!("{base}/metrics")).send().await {
                Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
                _ => continue,
            };
            let _ = fs::write(self.out.join(format!("metrics-{}.txt", svc.name)), &text);
            scraped.push((svc.name.to_owned(), text));
        }
        scraped
    }

    /// (service, pid) of everything running.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.services
            .iter()
            .map(|s| (s.name.to_owned(), s.pid))
            .collect()
    }

    /// Current resident set (VmRSS) of one service, in KiB; `None` if it is not running.
    pub fn rss_kib_of(&self, name: &str) -> Option<u64> {
        self.services
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| procfs::rss_kib(s.pid))
    }

    /// Peak resident set (VmHWM) of each service so far, in KiB.
    pub fn peak_rss_kib(&self) -> Vec<(String, Option<u64>)> {
        self.services
            .iter()
            .map(|s| (s.name.to_owned(), procfs::peak_rss_kib(s.pid)))
            .collect()
    }
}
