//! What every call carries and what a failed call says: the auth metadata a client attaches,
//! and the `error-code` trailer it reads back from a status.

use tonic::Status;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::metadata;

/// A metadata value that cannot go into a gRPC header (control characters, non-ASCII).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} holds characters a gRPC header cannot carry")]
pub struct InvalidMetadata {
    pub key: &'static str,
}

/// Puts `accesstoken`, `instanceurl` and `tenantid` into a call's metadata (replacing any
/// earlier values, so a refreshed token can be set on a retried request).
pub fn insert_auth(
    md: &mut MetadataMap,
    access_token: &str,
    instance_url: &str,
    tenant_id: &str,
) -> Result<(), InvalidMetadata> {
    for (key, value) in [
        (metadata::ACCESS_TOKEN, access_token),
        (metadata::INSTANCE_URL, instance_url),
        (metadata::TENANT_ID, tenant_id),
    ] {
        let value: MetadataValue<_> = value.parse().map_err(|_| InvalidMetadata { key })?;
        md.insert(key, value);
    }
    Ok(())
}

/// The `error-code` trailer of a failed call (e.g. [`crate::error_codes::REPLAY_ID_CORRUPTED`]).
pub fn error_code(status: &Status) -> Option<&str> {
    status
        .metadata()
        .get(metadata::ERROR_CODE)
        .and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_codes;

    #[test]
    fn auth_metadata_is_set_and_bad_values_refused() {
        let mut md = MetadataMap::new();
        assert_eq!(
            insert_auth(
                &mut md,
                "00D!tok",
                "https://x.my.salesforce.com",
                "00D000000000001AAA"
            ),
            Ok(())
        );
        assert_eq!(
            md.get("accesstoken").and_then(|v| v.to_str().ok()),
            Some("00D!tok")
        );
        assert_eq!(insert_auth(&mut md, "new", "u", "t"), Ok(()));
        assert_eq!(md.get_all("accesstoken").iter().count(), 1);
        assert_eq!(
            insert_auth(&mut md, "bad\ntoken", "u", "t"),
            Err(InvalidMetadata { key: "accesstoken" })
        );
    }

    #[test]
    fn error_code_is_read_from_the_trailer() {
        let mut md = MetadataMap::new();
        md.insert(
            metadata::ERROR_CODE,
            MetadataValue::from_static(error_codes::AUTH_ERROR),
        );
        let status = Status::with_metadata(tonic::Code::Unauthenticated, "no", md);
        assert_eq!(error_code(&status), Some(error_codes::AUTH_ERROR));
        assert_eq!(error_code(&Status::internal("x")), None);
    }
}
