//! How the receiver answers, set at run time with `POST /__admin/behaviour`.

use std::time::Duration;

use serde::Deserialize;

/// The behaviour JSON: `{"mode":"provision"}`, `{"mode":"fail","reason":"no stock"}`,
/// `{"mode":"error","status":500,"times":2}` (then back to provision), `{"mode":"accept",
/// "callback_url":"…","callback_after":"1s","then":"provision"}` (or `"then":"fail"` with a
/// `reason`), `{"mode":"hang"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Behaviour {
    Provision,
    Fail {
        #[serde(default = "default_reason")]
        reason: String,
    },
    Error {
        #[serde(default = "default_status")]
        status: u16,
        #[serde(default = "one")]
        times: u32,
    },
    Accept {
        callback_url: String,
        #[serde(default = "default_after", with = "humantime_serde_lite")]
        callback_after: Duration,
        #[serde(default)]
        then: Then,
        #[serde(default = "default_reason")]
        reason: String,
    },
    Hang,
}

/// What an accepted request's callback says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Then {
    #[default]
    Provision,
    Fail,
}

fn default_reason() -> String {
    "refused by the reference receiver".to_owned()
}

fn default_status() -> u16 {
    500
}

fn one() -> u32 {
    1
}

fn default_after() -> Duration {
    Duration::from_secs(1)
}

/// `"1s"`, `"250ms"` as a Duration (humantime's format).
mod humantime_serde_lite {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

impl Behaviour {
    /// Checks what serde cannot: an error status that is one, a callback URL that is http(s).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Error { status, .. } if !(400..=599).contains(status) => {
                Err(format!("status {status} is not an error status (400-599)"))
            }
            Self::Accept { callback_url, .. }
                if !(callback_url.starts_with("http://")
                    || callback_url.starts_with("https://")) =>
            {
                Err("callback_url must be an http(s) URL".to_owned())
            }
            Self::Fail { reason } | Self::Accept { reason, .. } if reason.len() > 1000 => {
                Err("reason is longer than 1000 bytes".to_owned())
            }
            _ => Ok(()),
        }
    }
}
