//! Where the RabbitMQ programs are.
//!
//! The search, in this order (the first place holding both programs wins):
//!
//! 1. `HUTCH_RABBITMQ_BIN_DIR`: the directory holding `rabbitmq-server`
//!    and `rabbitmqctl`. Set, it is the only place looked at: a wrong value
//!    is an error, not a reason to pick some other RabbitMQ.
//! 2. `$RABBITMQ_HOME/sbin`: RabbitMQ's generic-unix package
//!    (`rabbitmq_server-X.Y.Z/sbin/rabbitmq-server`).
//! 3. `rabbitmq-server` on `PATH`, symbolic links resolved (Homebrew's
//!    `/opt/homebrew/sbin` and `/usr/local/sbin` hold links into the
//!    Cellar), with `rabbitmqctl` beside the resolved script. Wrappers that
//!    switch to the `rabbitmq` user (Debian's and RPM's `/usr/sbin`
//!    entries) are passed over: run as root, they would start the node as a
//!    user who cannot write the node's temporary directory.
//! 4. Homebrew's fixed prefixes: `/opt/homebrew/opt/rabbitmq/sbin` (Apple
//!    silicon), `/usr/local/opt/rabbitmq/sbin` (Intel),
//!    `/home/linuxbrew/.linuxbrew/opt/rabbitmq/sbin` (Linux).
//! 5. Debian's `/usr/lib/rabbitmq/bin`, the scripts that run as the caller.

use std::{
    ffi::OsString,
    fs,
    io::Read,
    path::{Path, PathBuf},
};

use super::BrokerError;

/// The environment variable naming the directory that holds `rabbitmq-server`
/// and `rabbitmqctl`, overriding the search.
pub(crate) const BIN_DIR_VAR: &str = "HUTCH_RABBITMQ_BIN_DIR";

/// The environment variable of RabbitMQ's generic-unix package: the
/// unpacked `rabbitmq_server-X.Y.Z` directory.
pub(crate) const HOME_VAR: &str = "RABBITMQ_HOME";

/// Debian's directory of the scripts that run as the caller. The ones in
/// `/usr/sbin` switch to the `rabbitmq` user when run as root, which cannot
/// write to our temporary directory, so they are deliberately not used.
const DEBIAN_BIN_DIR: &str = "/usr/lib/rabbitmq/bin";

/// Where Homebrew links the current RabbitMQ keg's scripts, whatever the
/// version: Apple silicon, Intel macOS, Linux.
const HOMEBREW_BIN_DIRS: &[&str] = &[
    "/opt/homebrew/opt/rabbitmq/sbin",
    "/usr/local/opt/rabbitmq/sbin",
    "/home/linuxbrew/.linuxbrew/opt/rabbitmq/sbin",
];

const SERVER: &str = "rabbitmq-server";
const CTL: &str = "rabbitmqctl";

/// The two programs the harness runs.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    pub(crate) server: PathBuf,
    pub(crate) ctl: PathBuf,
}

impl Binaries {
    /// Finds the programs where the environment says, or says where it
    /// looked and how to install them.
    pub(crate) fn locate() -> Result<Self, BrokerError> {
        Search::from_env().locate()
    }
}

/// What the search looks at: the environment and the fixed places, apart
/// so that tests can point every step at directories of their own.
#[derive(Debug, Clone)]
pub(crate) struct Search {
    pub(crate) bin_dir: Option<OsString>,
    pub(crate) rabbitmq_home: Option<OsString>,
    pub(crate) path: Option<OsString>,
    pub(crate) homebrew_dirs: Vec<PathBuf>,
    pub(crate) debian_dir: PathBuf,
}

impl Search {
    /// The search this process's environment asks for.
    pub(crate) fn from_env() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        Self {
            bin_dir: var(BIN_DIR_VAR),
            rabbitmq_home: var(HOME_VAR),
            path: var("PATH"),
            homebrew_dirs: HOMEBREW_BIN_DIRS.iter().map(PathBuf::from).collect(),
            debian_dir: PathBuf::from(DEBIAN_BIN_DIR),
        }
    }

    /// Runs the search (see [the module docs](self)).
    pub(crate) fn locate(&self) -> Result<Binaries, BrokerError> {
        if let Some(dir) = &self.bin_dir {
            let dir = PathBuf::from(dir);
            return match in_dir(&dir) {
                Ok(binaries) => Ok(binaries),
                Err(path) => Err(BrokerError::NotInstalled { path }),
            };
        }
        let mut looked = Vec::new();

        match &self.rabbitmq_home {
            Some(home) => {
                let sbin = Path::new(home).join("sbin");
                if let Some(found) = attempt(&mut looked, &format!("{HOME_VAR}/sbin"), &sbin) {
                    return Ok(found);
                }
            }
            None => looked.push(format!("{HOME_VAR}/sbin: {HOME_VAR} is not set")),
        }

        match self.on_path(&mut looked) {
            Some(found) => return Ok(found),
            None if self.path.is_none() => looked.push("PATH: not set".to_owned()),
            None => {}
        }

        for dir in &self.homebrew_dirs {
            if let Some(found) = attempt(&mut looked, "Homebrew", dir) {
                return Ok(found);
            }
        }
        if let Some(found) = attempt(&mut looked, "Debian", &self.debian_dir) {
            return Ok(found);
        }
        Err(BrokerError::NotFound { looked })
    }

    /// `rabbitmq-server` in the first `PATH` directory that has a usable
    /// one, resolved to where it really is, with `rabbitmqctl` beside it.
    fn on_path(&self, looked: &mut Vec<String>) -> Option<Binaries> {
        let path = self.path.as_ref()?;
        let mut seen_any = false;
        for dir in std::env::split_paths(path) {
            let candidate = dir.join(SERVER);
            if !is_file(&candidate) {
                continue;
            }
            seen_any = true;
            let resolved = match fs::canonicalize(&candidate) {
                Ok(resolved) => resolved,
                Err(error) => {
                    looked.push(format!("PATH: {}: {error}", candidate.display()));
                    continue;
                }
            };
            if let Some(why) = wrapper(&resolved) {
                looked.push(format!("PATH: {} passed over ({why})", candidate.display()));
                continue;
            }
            let Some(real_dir) = resolved.parent() else {
                continue;
            };
            match in_dir(real_dir) {
                Ok(binaries) => return Some(binaries),
                Err(missing) => looked.push(format!(
                    "PATH: {} is {}, but there is no {}",
                    candidate.display(),
                    resolved.display(),
                    missing.display()
                )),
            }
        }
        if !seen_any {
            looked.push(format!("PATH: no {SERVER} in any of its directories"));
        }
        None
    }
}

/// Both programs in `dir`; if one is missing, `None` and a line in `looked`
/// naming it.
fn attempt(looked: &mut Vec<String>, what: &str, dir: &Path) -> Option<Binaries> {
    match in_dir(dir) {
        Ok(binaries) => Some(binaries),
        Err(missing) => {
            looked.push(format!("{what}: no {}", missing.display()));
            None
        }
    }
}

/// Both programs in `dir`, or the first one missing.
fn in_dir(dir: &Path) -> Result<Binaries, PathBuf> {
    let found = |name: &str| {
        let path = dir.join(name);
        if is_file(&path) { Ok(path) } else { Err(path) }
    };
    Ok(Binaries {
        server: found(SERVER)?,
        ctl: found(CTL)?,
    })
}

/// Why the script at `resolved` (links resolved) is a wrapper that runs
/// the real one as another user, or `None` for the real script.
///
/// Debian's `/usr/sbin/rabbitmq-server` is a link to
/// `rabbitmq-script-wrapper`, RPM's to the wrapper installed as
/// `rabbitmqctl`; both `su` to the `rabbitmq` user when run as root.
fn wrapper(resolved: &Path) -> Option<String> {
    let name = resolved.file_name()?.to_string_lossy();
    if name != SERVER {
        return Some(format!(
            "it is {}, a wrapper that runs RabbitMQ as the rabbitmq user",
            resolved.display()
        ));
    }
    // The scripts are short; their start says what they are.
    let mut head = Vec::new();
    let read = fs::File::open(resolved).and_then(|file| file.take(8192).read_to_end(&mut head));
    let head = String::from_utf8_lossy(if read.is_ok() { &head } else { &[] });
    ["su rabbitmq", "runuser", "rabbitmq-script-wrapper"]
        .iter()
        .find(|needle| head.contains(*needle))
        .map(|needle| format!("it is a wrapper that switches users (`{needle}`)"))
}

/// Follows symbolic links: Debian's entries are links into the versioned
/// release directory.
fn is_file(path: &Path) -> bool {
    path.metadata().is_ok_and(|meta| meta.is_file())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    /// A search that finds nothing anywhere but where a test points it.
    fn nowhere(root: &Path) -> Search {
        Search {
            bin_dir: None,
            rabbitmq_home: None,
            path: None,
            homebrew_dirs: vec![root.join("no-homebrew")],
            debian_dir: root.join("no-debian"),
        }
    }

    /// `dir` with an executable script for each of `names`.
    fn programs(dir: &Path, names: &[&str], body: &str) -> PathBuf {
        fs::create_dir_all(dir).unwrap();
        for name in names {
            let path = dir.join(name);
            fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir.to_owned()
    }

    fn both(dir: &Path) -> PathBuf {
        programs(dir, &[SERVER, CTL], "exec true")
    }

    #[test]
    fn the_generic_unix_layout_is_found_through_rabbitmq_home() {
        let root = tempfile::tempdir().unwrap();
        let home = root.path().join("rabbitmq_server-3.13.7");
        both(&home.join("sbin"));
        fs::create_dir_all(home.join("plugins")).unwrap();
        let search = Search {
            rabbitmq_home: Some(home.clone().into()),
            // Homebrew and Debian would have it too: RABBITMQ_HOME comes first.
            debian_dir: both(&root.path().join("debian")),
            ..nowhere(root.path())
        };
        let found = search.locate().unwrap();
        assert_eq!(found.server, home.join("sbin/rabbitmq-server"));
        assert_eq!(found.ctl, home.join("sbin/rabbitmqctl"));
    }

    #[test]
    fn the_bin_dir_variable_wins_and_is_not_second_guessed() {
        let root = tempfile::tempdir().unwrap();
        let chosen = both(&root.path().join("chosen"));
        let search = Search {
            bin_dir: Some(chosen.clone().into()),
            debian_dir: both(&root.path().join("debian")),
            ..nowhere(root.path())
        };
        assert_eq!(search.locate().unwrap().server, chosen.join(SERVER));

        // Set but wrong: an error naming it, although Debian's would do.
        let search = Search {
            bin_dir: Some(root.path().join("wrong").into()),
            ..search
        };
        let error = search.locate().unwrap_err().to_string();
        assert!(error.contains("wrong/rabbitmq-server"), "{error}");
    }

    #[test]
    fn a_homebrew_link_on_path_is_resolved_into_the_cellar() {
        let root = tempfile::tempdir().unwrap();
        let cellar = both(&root.path().join("Cellar/rabbitmq/3.13.7/sbin"));
        // Homebrew links the scripts one by one into its sbin.
        let sbin = root.path().join("sbin");
        fs::create_dir_all(&sbin).unwrap();
        symlink(cellar.join(SERVER), sbin.join(SERVER)).unwrap();
        let empty = root.path().join("bin");
        fs::create_dir_all(&empty).unwrap();
        let search = Search {
            path: Some(std::env::join_paths([&empty, &sbin]).unwrap()),
            debian_dir: both(&root.path().join("debian")),
            ..nowhere(root.path())
        };
        let found = search.locate().unwrap();
        let cellar = fs::canonicalize(cellar).unwrap();
        assert_eq!(found.server, cellar.join(SERVER));
        assert_eq!(found.ctl, cellar.join(CTL), "rabbitmqctl beside the script");
    }

    #[test]
    fn user_switching_wrappers_on_path_are_passed_over() {
        let root = tempfile::tempdir().unwrap();
        // Debian's layout: /usr/sbin/rabbitmq-server -> rabbitmq-script-wrapper.
        let lib_bin = programs(
            &root.path().join("usr/lib/rabbitmq/bin"),
            &["rabbitmq-script-wrapper"],
            "su rabbitmq -s /bin/sh -c \"/usr/lib/rabbitmq/bin/$SCRIPT\"",
        );
        both(&lib_bin);
        let usr_sbin = root.path().join("usr/sbin");
        fs::create_dir_all(&usr_sbin).unwrap();
        symlink(
            lib_bin.join("rabbitmq-script-wrapper"),
            usr_sbin.join(SERVER),
        )
        .unwrap();
        symlink(lib_bin.join("rabbitmq-script-wrapper"), usr_sbin.join(CTL)).unwrap();
        // A wrapper named like the real script is known by what it does.
        let other = programs(
            &root.path().join("other"),
            &[SERVER, CTL],
            "exec runuser -u rabbitmq -- /opt/rabbitmq/sbin/rabbitmq-server",
        );
        let search = Search {
            path: Some(std::env::join_paths([&usr_sbin, &other]).unwrap()),
            debian_dir: lib_bin.clone(),
            ..nowhere(root.path())
        };
        let found = search.locate().unwrap();
        assert_eq!(found.server, lib_bin.join(SERVER), "Debian's own directory");

        let error = Search {
            debian_dir: root.path().join("no-debian"),
            ..search
        }
        .locate()
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("rabbitmq-script-wrapper") && error.contains("runuser"),
            "{error}"
        );
    }

    #[test]
    fn homebrew_prefixes_come_before_debian() {
        let root = tempfile::tempdir().unwrap();
        let brew = both(&root.path().join("opt/rabbitmq/sbin"));
        let search = Search {
            homebrew_dirs: vec![root.path().join("missing"), brew.clone()],
            debian_dir: both(&root.path().join("debian")),
            ..nowhere(root.path())
        };
        assert_eq!(search.locate().unwrap().server, brew.join(SERVER));
    }

    #[test]
    fn nothing_found_lists_every_place_looked_at() {
        let root = tempfile::tempdir().unwrap();
        // rabbitmq-server without rabbitmqctl is not an installation.
        let half = programs(&root.path().join("half"), &[SERVER], "exec true");
        let search = Search {
            rabbitmq_home: Some(root.path().join("home").into()),
            path: Some(half.clone().into()),
            ..nowhere(root.path())
        };
        let error = search.locate().unwrap_err().to_string();
        for expected in [
            "RABBITMQ_HOME/sbin: no ",
            "home/sbin/rabbitmq-server",
            "there is no ",
            "half/rabbitmqctl",
            "no-homebrew/rabbitmq-server",
            "no-debian/rabbitmq-server",
            "brew install rabbitmq",
            "apt-get install rabbitmq-server",
            "HUTCH_TEST_URI",
        ] {
            assert!(error.contains(expected), "{expected:?} missing in {error}");
        }
        let unset = nowhere(root.path()).locate().unwrap_err().to_string();
        assert!(
            unset.contains("RABBITMQ_HOME is not set") && unset.contains("PATH: not set"),
            "{unset}"
        );
    }
}
