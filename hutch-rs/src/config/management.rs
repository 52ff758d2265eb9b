//! The stale-binding settings, checked by `build()`: whether to remove
//! them, and the management API that lists them.

use super::{BrokerUri, layered::Layered, sources::Source};
use crate::{Result, management::ManagementApi};

/// The management API when stale-binding removal is on, `None` when it is
/// off. A management URI that is set is checked either way, so that a
/// mistake shows before the day removal is turned on.
pub(super) fn validate(
    remove: &Layered<bool>,
    management_uri: &Layered<Option<String>>,
    uri_setting: &Layered<Vec<String>>,
    uris: &[BrokerUri],
) -> Result<Option<ManagementApi>> {
    let remove_source = &remove.source;
    let remove = *remove.parsed()?;
    let given = management_uri.parsed()?;
    // The application's vhost and default credentials: the first node's,
    // as the nodes of one cluster share them.
    let (Some(broker), Some(broker_text)) = (uris.first(), uri_setting.value.first()) else {
        return Ok(None);
    };
    let api = match given {
        Some(text) => Some(
            ManagementApi::from_uri(text, broker.expose(), management_uri.source.to_string())
                .map_err(|reason| management_uri.invalid(reason))?,
        ),
        None if remove => {
            let uri_origin = match &uri_setting.source {
                Source::Default => "the default broker URI".to_owned(),
                source => source.to_string(),
            };
            let origin = format!(
                "derived from {uri_origin}; set HUTCH_MANAGEMENT_URI, management_uri or HutchBuilder::management_uri to override"
            );
            Some(
                ManagementApi::derived(broker_text, broker.expose(), origin).map_err(|reason| {
                    crate::Error::Config {
                        setting: format!("{remove_source} without a management URI"),
                        reason,
                    }
                })?,
            )
        }
        None => None,
    };
    Ok(api.filter(|_| remove))
}
