//! `--user USER` / `--group GROUP`: bind port 443 and read the certificate as root, then run
//! as an unprivileged user.
//!
//! The names are looked up at start-up, before anything is bound ([`resolve`]); the switch
//! ([`Switch::apply`]) happens once the listeners, the pid file, the certificate and the
//! other start-up files are open, and before the first connection is accepted or the wrapped
//! program is started. The order is the usual one: supplementary groups (the user's, from
//! the group database), then the group, then the user; afterwards the process checks that it
//! cannot get root back. glibc applies each call to every thread of the process.

use std::ffi::CString;

use anyhow::{Context as _, bail};
use nix::unistd::{Gid, Group, Uid, User};

/// Who to become, resolved from the names on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    pub uid: Option<Uid>,
    pub gid: Gid,
    /// Supplementary groups: the user's groups, or just `gid` with `--group` alone.
    pub groups: Vec<Gid>,
    /// For the log: `user nobody (uid 65534), group nogroup (gid 65534)`.
    pub description: String,
    /// The user's name, for messages.
    pub user_name: Option<String>,
}

/// Looks the names up (a number is taken as an id when no such name exists). `None` when
/// neither option is given.
pub fn resolve(user: Option<&str>, group: Option<&str>) -> anyhow::Result<Option<Switch>> {
    let user = user.map(lookup_user).transpose()?;
    let group = match (group, &user) {
        (Some(name), _) => lookup_group(name)?,
        // --user alone: the user's primary group.
        (None, Some(user)) => Group::from_gid(user.gid)
            .ok()
            .flatten()
            .unwrap_or_else(|| nameless_group(user.gid)),
        (None, None) => return Ok(None),
    };
    let groups = match &user {
        Some(user) => {
            let name = CString::new(user.name.as_bytes())
                .with_context(|| format!("user name {:?} contains a NUL byte", user.name))?;
            nix::unistd::getgrouplist(&name, group.gid)
                .with_context(|| format!("cannot list the groups of user {}", user.name))?
        }
        None => vec![group.gid],
    };
    let mut description = String::new();
    if let Some(user) = &user {
        description.push_str(&format!("user {} (uid {}), ", user.name, user.uid));
    }
    description.push_str(&format!("group {} (gid {})", group.name, group.gid));
    Ok(Some(Switch {
        uid: user.as_ref().map(|u| u.uid),
        gid: group.gid,
        groups,
        description,
        user_name: user.map(|u| u.name),
    }))
}

fn nameless_group(gid: Gid) -> Group {
    Group {
        name: gid.to_string(),
        passwd: CString::default(),
        gid,
        mem: Vec::new(),
    }
}

fn lookup_user(name: &str) -> anyhow::Result<User> {
    let found = User::from_name(name)
        .with_context(|| format!("--user {name}: cannot read the user database"))?;
    if let Some(user) = found {
        return Ok(user);
    }
    if let Ok(uid) = name.parse::<u32>()
        && let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid))
    {
        return Ok(user);
    }
    bail!("--user {name}: no such user (check `getent passwd {name}`)")
}

fn lookup_group(name: &str) -> anyhow::Result<Group> {
    let found = Group::from_name(name)
        .with_context(|| format!("--group {name}: cannot read the group database"))?;
    if let Some(group) = found {
        return Ok(group);
    }
    if let Ok(gid) = name.parse::<u32>() {
        let gid = Gid::from_raw(gid);
        return Ok(Group::from_gid(gid)
            .ok()
            .flatten()
            .unwrap_or_else(|| nameless_group(gid)));
    }
    bail!("--group {name}: no such group (check `getent group {name}`)")
}

impl Switch {
    /// Switches the whole process; errors say what failed and why (usually: not root).
    pub fn apply(&self) -> anyhow::Result<()> {
        let euid = Uid::effective();
        let already = self
            .uid
            .is_none_or(|uid| uid == euid && uid == Uid::current())
            && self.gid == Gid::effective()
            && self.gid == Gid::current();
        if already && !euid.is_root() {
            tracing::info!("already running as {}", self.description);
            return Ok(());
        }
        let why = |what: &str, err: nix::Error| {
            let hint = if euid.is_root() {
                ""
            } else {
                " (only root can switch users and groups; start websockify as root or drop \
                 --user/--group)"
            };
            anyhow::anyhow!(
                "cannot switch to {}: {what} failed: {}{hint}",
                self.description,
                std::io::Error::from(err)
            )
        };
        nix::unistd::setgroups(&self.groups).map_err(|e| why("setgroups", e))?;
        nix::unistd::setgid(self.gid).map_err(|e| why("setgid", e))?;
        if let Some(uid) = self.uid {
            nix::unistd::setuid(uid).map_err(|e| why("setuid", e))?;
        }
        self.verify()?;
        tracing::info!("switched to {}", self.description);
        Ok(())
    }

    /// The ids are what was asked for, and root cannot be regained.
    fn verify(&self) -> anyhow::Result<()> {
        let gids_ok = Gid::current() == self.gid && Gid::effective() == self.gid;
        let uids_ok = self
            .uid
            .is_none_or(|uid| Uid::current() == uid && Uid::effective() == uid);
        if !gids_ok || !uids_ok {
            bail!(
                "switching to {} left uid {}/{} gid {}/{}; refusing to run",
                self.description,
                Uid::current(),
                Uid::effective(),
                Gid::current(),
                Gid::effective()
            );
        }
        if let Some(uid) = self.uid
            && !uid.is_root()
            && nix::unistd::setuid(Uid::from_raw(0)).is_ok()
        {
            bail!(
                "after switching to {} the process could become root again; refusing to run",
                self.description
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_ids_and_the_primary_group() {
        assert_eq!(resolve(None, None).unwrap(), None);
        let root = resolve(Some("root"), None).unwrap().unwrap();
        assert_eq!(
            (root.uid, root.gid),
            (Some(Uid::from_raw(0)), Gid::from_raw(0))
        );
        assert!(root.groups.contains(&Gid::from_raw(0)));
        assert!(
            root.description.starts_with("user root (uid 0), group "),
            "{}",
            root.description
        );
        assert_eq!(resolve(Some("0"), None).unwrap().unwrap().uid, root.uid);
        let group = resolve(None, Some("0")).unwrap().unwrap();
        assert_eq!(
            (group.uid, group.groups.as_slice()),
            (None, &[Gid::from_raw(0)][..])
        );
    }

    #[test]
    fn unknown_names_are_refused_with_the_name() {
        let err = resolve(Some("no-such-user-xyz"), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--user no-such-user-xyz: no such user"),
            "{err}"
        );
        let err = resolve(Some("root"), Some("no-such-group-xyz"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--group no-such-group-xyz: no such group"),
            "{err}"
        );
    }
}
