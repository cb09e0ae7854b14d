//! The state directory check: writable, or creatable, by this user.

use super::*;

/// The daemon remembers answered request ids in `state_dir` so a request
/// redelivered after a restart is not answered twice.
pub(super) fn state_dir_check(cfg: &Config) -> Check {
    let Some(dir) = &cfg.state_dir else {
        return Check::warn(
            "state_dir",
            "not set: answered request ids are kept in memory only, so a request redelivered \
             after a restart can be answered twice",
            "set state_dir in the config (as a service: \"/var/lib/blipd/state\")",
        );
    };
    let shown = dir.display();
    let not_writable = format!(
        "give the user running blipd write access to {shown} (as a service, use a directory \
         under /var/lib/blipd: StateDirectory= makes it writable)"
    );
    if dir.is_dir() {
        return match probe_writable(dir) {
            Ok(()) => Check::ok("state_dir", format!("{shown} exists and is writable")),
            Err(e) => Check::fail(
                "state_dir",
                format!("{shown} is not writable: {e}"),
                not_writable,
            ),
        };
    }
    if dir.exists() {
        return Check::fail(
            "state_dir",
            format!("{shown} exists but is not a directory"),
            "point state_dir at a directory (blipd keeps answered.jsonl in it)",
        );
    }
    // blipd serve creates it (create_dir_all): the nearest existing ancestor
    // must be writable.
    let Some(parent) = nearest_existing_ancestor(dir) else {
        return Check::fail(
            "state_dir",
            format!("{shown} does not exist and has no existing parent"),
            not_writable,
        );
    };
    match probe_writable(&parent) {
        Ok(()) => Check::ok(
            "state_dir",
            format!(
                "{shown} does not exist yet; blipd serve will create it ({} is writable)",
                parent.display()
            ),
        ),
        Err(e) => Check::fail(
            "state_dir",
            format!(
                "{shown} does not exist and cannot be created: {} is not writable ({e})",
                parent.display()
            ),
            format!("create it: `sudo install -d -o $USER {shown}`, or as a service use a directory under /var/lib/blipd"),
        ),
    }
}

fn nearest_existing_ancestor(dir: &Path) -> Option<PathBuf> {
    let absolute = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(dir)
    };
    absolute
        .ancestors()
        .find(|a| a.is_dir())
        .map(Path::to_path_buf)
}

/// Creates and removes a file: the only reliable test (permission bits do
/// not tell about read-only mounts, ACLs or systemd's ProtectSystem=).
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".blipd-doctor-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}
