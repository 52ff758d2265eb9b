//! Where the RabbitMQ programs are.

use std::path::{Path, PathBuf};

use super::BrokerError;

/// The environment variable naming the directory that holds `rabbitmq-server`
/// and `rabbitmqctl`, for installations other than Debian's.
pub(crate) const BIN_DIR_VAR: &str = "HUTCH_RABBITMQ_BIN_DIR";

/// Debian's directory of the scripts that run as the caller. The ones in
/// `/usr/sbin` switch to the `rabbitmq` user when run as root, which cannot
/// write to our temporary directory, so they are deliberately not used.
const DEFAULT_BIN_DIR: &str = "/usr/lib/rabbitmq/bin";

/// The two programs the harness runs.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    pub(crate) server: PathBuf,
    pub(crate) ctl: PathBuf,
}

impl Binaries {
    /// Finds the programs, or says how to install them.
    pub(crate) fn locate() -> Result<Self, BrokerError> {
        let dir = std::env::var_os(BIN_DIR_VAR)
            .filter(|dir| !dir.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_BIN_DIR), PathBuf::from);
        let found = |name: &str| {
            let path = dir.join(name);
            if is_file(&path) {
                Ok(path)
            } else {
                Err(BrokerError::NotInstalled { path })
            }
        };
        Ok(Self {
            server: found("rabbitmq-server")?,
            ctl: found("rabbitmqctl")?,
        })
    }
}

/// Follows symbolic links: Debian's entries are links into the versioned
/// release directory.
fn is_file(path: &Path) -> bool {
    path.metadata().is_ok_and(|meta| meta.is_file())
}
