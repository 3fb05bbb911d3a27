//! Debian releases as sources of Nix: a host's root, or the deployer's nix
//! commands, can come from bookworm (Nix 2.8), trixie (2.26) or sid (2.34).
//!
//! A release's root is made once by scripts/release-root.sh (debootstrap
//! and apt, from Debian's packages) and kept in [`ROOTS`]; tests that start
//! together wait for the one that makes it.

use crate::TestbedError;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where release roots are kept between runs.
pub const ROOTS: &str = "/var/cache/nixpipe-testbed";
/// The file scripts/release-root.sh writes last: a root without it is
/// missing something the tests need (tcsh and fish came in version 2,
/// qemu in 4).
const ROOT_VERSION: &str = ".nixpipe-testbed-root-5";

/// The Nix programs a deployer runs, each a name of the one `nix` binary.
const NIX_PROGRAMS: &[&str] = &[
    "nix",
    "nix-build",
    "nix-channel",
    "nix-collect-garbage",
    "nix-copy-closure",
    "nix-daemon",
    "nix-env",
    "nix-hash",
    "nix-instantiate",
    "nix-prefetch-url",
    "nix-shell",
    "nix-store",
];

/// The script in the wrappers' directory that runs a program of the
/// release's root there.
const ENTER: &str = "enter-release-root";
/// The script that runs a program in a given directory, inside the root.
const IN_DIR: &str = "in-dir";

/// A Debian release, named for the Nix its nix-bin package carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    Bookworm,
    Trixie,
    Sid,
}

impl Release {
    pub const ALL: [Release; 3] = [Release::Bookworm, Release::Trixie, Release::Sid];

    pub fn name(self) -> &'static str {
        match self {
            Release::Bookworm => "bookworm",
            Release::Trixie => "trixie",
            Release::Sid => "sid",
        }
    }

    /// The Nix version of the release's nix-bin, as `nix-store --version`
    /// says it (major.minor).
    pub fn nix_version(self) -> &'static str {
        match self {
            Release::Bookworm => "2.8",
            Release::Trixie => "2.26",
            Release::Sid => "2.34",
        }
    }

    /// `bookworm`, `trixie` or `sid`; `machine` (or nothing) is None: the
    /// Nix this machine has installed.
    pub fn parse(name: &str) -> Result<Option<Release>, TestbedError> {
        match name {
            "" | "machine" => Ok(None),
            _ => {
                Release::ALL.into_iter().find(|r| r.name() == name).map(Some).ok_or_else(|| {
                    TestbedError(format!("unknown Nix release `{name}`: bookworm, trixie, sid or machine"))
                })
            }
        }
    }

    /// The release named by the environment variable `var`, if any.
    pub fn from_env(var: &str) -> Result<Option<Release>, TestbedError> {
        Release::parse(&std::env::var(var).unwrap_or_default()).map_err(|e| TestbedError(format!("{var}: {}", e.0)))
    }

    /// The release's root directory, made when missing.
    pub fn root(self) -> Result<PathBuf, TestbedError> {
        let root = Path::new(ROOTS).join(self.name());
        if root.join(ROOT_VERSION).exists() {
            return Ok(root);
        }
        fs::create_dir_all(ROOTS).map_err(|e| TestbedError(format!("cannot create {ROOTS}: {e}")))?;
        // One test makes the root; the others wait on the lock, then find it.
        let lock = fs::File::create(Path::new(ROOTS).join(format!("{}.lock", self.name())))
            .map_err(|e| TestbedError(format!("cannot lock {ROOTS}: {e}")))?;
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(TestbedError(format!("cannot lock {ROOTS}: {}", std::io::Error::last_os_error())));
        }
        if !root.join(ROOT_VERSION).exists() {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/release-root.sh");
            let status = Command::new("bash")
                .arg(script)
                .arg(self.name())
                .arg(&root)
                .status()
                .map_err(|e| TestbedError(format!("cannot run scripts/release-root.sh: {e}")))?;
            if !status.success() {
                return Err(TestbedError(format!("the {self} root could not be made (scripts/release-root.sh)")));
            }
        }
        Ok(root)
    }

    /// Writes into `bin` a wrapper for each Nix program that runs the
    /// release's own program in the release's own userland (its libraries,
    /// its /etc: a release's Nix run on another release's files can crash,
    /// as bookworm's does on sid's), chrooted into its root in a mount
    /// namespace of its own where this machine's /nix, /tmp, /root, /proc,
    /// /dev, /sys, this repository and the VM kit (the kernel a system that
    /// boots through a boot loader copies into the store) are bound in: so
    /// the deployer runs that Nix on this machine's store, with the
    /// testbed's files.
    pub fn install_nix_wrappers(self, bin: &Path) -> Result<(), TestbedError> {
        let root = self.root()?;
        fs::create_dir_all(bin).map_err(|e| TestbedError(format!("cannot create {}: {e}", bin.display())))?;
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned();
        // In the root, /bin/sh is the release's; the scripts are in /tmp.
        let in_dir = "#!/bin/sh\ncd \"$1\" || exit 1\nshift\nexec \"$@\"\n";
        write_script(&bin.join(IN_DIR), in_dir)?;
        let enter = format!(
            r#"#!/bin/sh
# PROGRAM ARGS...: {release}'s Nix program, in its root {root}.
exec unshare --mount --propagation private -- /bin/sh -c '
root=$1; shift
for d in /nix /tmp /root /proc /dev /sys {repo} {kit}; do
    [ -d "$d" ] || continue
    mkdir -p "$root$d" && mount --rbind "$d" "$root$d" || exit 1
done
exec chroot "$root" "$@"
' sh {root} {in_dir} "$PWD" "/usr/bin/$@"
"#,
            release = self.name(),
            root = root.display(),
            repo = repo.display(),
            kit = crate::vm::KIT,
            in_dir = bin.join(IN_DIR).display(),
        );
        write_script(&bin.join(ENTER), &enter)?;
        for program in NIX_PROGRAMS {
            let wrapper = format!("#!/bin/sh\nexec {} {program} \"$@\"\n", bin.join(ENTER).display());
            write_script(&bin.join(program), &wrapper)?;
        }
        Ok(())
    }
}

fn write_script(path: &Path, text: &str) -> Result<(), TestbedError> {
    fs::write(path, text)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o755)))
        .map_err(|e| TestbedError(format!("cannot write {}: {e}", path.display())))
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} (Nix {})", self.name(), self.nix_version())
    }
}
