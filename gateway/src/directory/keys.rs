//! Every Redis key the gateway reads or writes: the group service's (its contract is
//! docs/groups.md) and the gateways' own presence directory ([`super::presence`]).

use petrel_core::{GroupId, UserId};

/// Set of the user ids in group `g` (written by the group service).
pub fn members_key(g: &GroupId) -> String {
    format!("group:{g}:members")
}

/// Set of the group ids user `u` is in (written by the group service).
pub fn groups_key(u: &UserId) -> String {
    format!("user:{u}:groups")
}

/// Set of the user ids `u` may see (presence, typing), written by the application.
pub fn contacts_key(u: &UserId) -> String {
    format!("contacts:{u}")
}

/// Hash of `u`'s connected devices: device → `{gateway_id}|{last_seen_ms}`.
pub fn presence_key(u: &UserId) -> String {
    format!("presence:{u}")
}
