//! Push targets and the push service's decisions, without I/O.
//!
//! - [`PushTarget`], [`Registration`], [`Devices`]: what a device registers (the
//!   `RegisterPush` frame, validated) and how the registry stores it: one JSON value
//!   per user (`crate::subject::push_registry`), holding that user's devices.
//! - [`audience`]: who is woken for a stored message (never the sender, never for a
//!   receipt or the sender's own copy).
//! - [`Alert`]: what a push says, with the preview preference applied.
//! - [`Backoff`]: when to try a provider again after a 429 or 5xx.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, UserId};
use crate::subject::Subject;

/// The most devices one user may register; registering one more forgets the one
/// registered longest ago.
pub const MAX_DEVICES_PER_USER: usize = 16;

/// Longest token or endpoint accepted.
const MAX_TOKEN: usize = 4096;
/// Longest APNs topic (a bundle id).
const MAX_TOPIC: usize = 255;
/// Longest locale tag.
const MAX_LOCALE: usize = 35;

/// Where a device is woken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "platform", rename_all = "lowercase")]
pub enum PushTarget {
    /// Apple Push Notification service.
    Apns {
        /// The device token (hex).
        token: String,
        /// The app's bundle id (`apns-topic`).
        topic: String,
        /// A development (sandbox) token.
        sandbox: bool,
    },
    /// Firebase Cloud Messaging.
    Fcm {
        /// The registration token.
        token: String,
    },
    /// A browser's push subscription (RFC 8030).
    #[serde(rename = "webpush")]
    WebPush {
        /// The push resource (https).
        endpoint: String,
        /// The subscription's P-256 public key, uncompressed (65 bytes), base64url.
        p256dh: String,
        /// The 16-byte authentication secret, base64url.
        auth: String,
    },
}

impl PushTarget {
    /// `apns`, `fcm` or `webpush` (metrics label, CLI).
    pub fn platform(&self) -> &'static str {
        match self {
            Self::Apns { .. } => "apns",
            Self::Fcm { .. } => "fcm",
            Self::WebPush { .. } => "webpush",
        }
    }

    /// Checks the fields' shape (the provider decides whether the token is live).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Apns { token, topic, .. } => {
                if token.is_empty() || token.len() > MAX_TOKEN {
                    return Err("apns device_token must be 1 to 4096 characters".into());
                }
                if !token.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err("apns device_token must be hexadecimal".into());
                }
                if topic.is_empty()
                    || topic.len() > MAX_TOPIC
                    || !topic
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
                {
                    return Err(
                        "apns topic must be the app's bundle id (letters, digits, - . _)".into(),
                    );
                }
            }
            Self::Fcm { token } => {
                if token.is_empty()
                    || token.len() > MAX_TOKEN
                    || !token.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err("fcm token must be 1 to 4096 printable characters".into());
                }
            }
            Self::WebPush {
                endpoint,
                p256dh,
                auth,
            } => {
                if endpoint.len() > MAX_TOKEN || !endpoint.starts_with("https://") {
                    return Err("webpush endpoint must be an https URL".into());
                }
                match b64url(p256dh) {
                    Some(k) if k.len() == 65 && k[0] == 4 => {}
                    _ => {
                        return Err(
                            "webpush p256dh must be an uncompressed P-256 key (65 bytes, base64url)"
                                .into(),
                        );
                    }
                }
                if b64url(auth).map(|a| a.len()) != Some(16) {
                    return Err("webpush auth must be 16 bytes, base64url".into());
                }
            }
        }
        Ok(())
    }
}

/// Decodes base64url with or without padding.
pub fn b64url(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// Whether the text of a message may leave the system in a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preview {
    /// The push service's configured default.
    #[default]
    Default,
    /// "alice: hi".
    Show,
    /// "New message".
    Hide,
}

/// One device's registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Where it is woken.
    pub target: PushTarget,
    /// BCP 47 tag, may be empty.
    #[serde(default)]
    pub locale: String,
    /// Preview preference.
    #[serde(default)]
    pub preview: Preview,
    /// When it was registered (ms since the Unix epoch).
    pub registered_ms: u64,
}

impl Registration {
    /// Validates what a device sent.
    pub fn new(
        target: PushTarget,
        locale: String,
        preview: Preview,
        now_ms: u64,
    ) -> Result<Self, String> {
        target.validate()?;
        if locale.len() > MAX_LOCALE
            || !locale
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("locale must be a BCP 47 tag of at most 35 characters".into());
        }
        Ok(Self {
            target,
            locale,
            preview,
            registered_ms: now_ms,
        })
    }
}

/// A user's registered devices: the registry's value for one user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Devices {
    /// Device id → its registration.
    pub devices: BTreeMap<String, Registration>,
}

impl Devices {
    /// Reads a registry value; `None` when it is not one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// The registry value.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Sets `device`'s registration (`None` removes it). Another device that had the
    /// same target loses it: a token moved to a new device id (a reinstall) must not
    /// wake both. Beyond [`MAX_DEVICES_PER_USER`] the oldest registration goes.
    /// Returns whether anything changed.
    pub fn set(&mut self, device: &DeviceId, reg: Option<Registration>) -> bool {
        let before = self.clone();
        match reg {
            None => {
                self.devices.remove(device.as_str());
            }
            Some(reg) => {
                self.devices
                    .retain(|d, r| d == device.as_str() || r.target != reg.target);
                let unchanged = self.devices.get(device.as_str()).is_some_and(|r| {
                    r.target == reg.target && r.locale == reg.locale && r.preview == reg.preview
                });
                if !unchanged {
                    self.devices.insert(device.as_str().to_string(), reg);
                }
                while self.devices.len() > MAX_DEVICES_PER_USER {
                    let oldest = self
                        .devices
                        .iter()
                        .filter(|(d, _)| d.as_str() != device.as_str())
                        .min_by_key(|(_, r)| r.registered_ms)
                        .map(|(d, _)| d.clone());
                    match oldest {
                        Some(d) => self.devices.remove(&d),
                        None => break,
                    };
                }
            }
        }
        *self != before
    }

    /// Removes `device` only while it still has `target` (a pruned token must not
    /// remove a newer registration). Returns whether it did.
    pub fn prune(&mut self, device: &str, target: &PushTarget) -> bool {
        if self
            .devices
            .get(device)
            .is_some_and(|r| &r.target == target)
        {
            self.devices.remove(device);
            true
        } else {
            false
        }
    }
}

/// What kind of thing a push announces; decides priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushKind {
    /// A direct message.
    Direct,
    /// A group message.
    Group,
    /// A system notification with its priority.
    Notification(NotificationPriority),
}

/// A notification's priority (from the business service).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationPriority {
    /// Shown, no hurry.
    Low,
    /// Shown.
    Normal,
    /// Wakes the device now.
    High,
}

/// How urgently a provider should deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// May wait for the device to wake (APNs 5, FCM NORMAL, Web Push `low`).
    Normal,
    /// Now (APNs 10, FCM HIGH, Web Push `high`).
    High,
}

impl PushKind {
    /// Messages wake now; notifications as their priority says.
    pub fn urgency(self) -> Urgency {
        match self {
            Self::Direct | Self::Group | Self::Notification(NotificationPriority::High) => {
                Urgency::High
            }
            Self::Notification(_) => Urgency::Normal,
        }
    }
}

/// Who a stored message wakes: the recipient users (for a group, its members), never
/// the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// Nobody (a receipt, the sender's own copy).
    Nobody,
    /// One user.
    User(UserId),
    /// The members of the group except `sender`.
    GroupExcept {
        /// The group's subject.
        group: crate::ids::GroupId,
        /// Who sent it.
        sender: UserId,
    },
}

/// Who `subject`'s stored message from `from` (empty for a notification) wakes.
/// `is_receipt`: a receipt is delivered like a message but never pushed.
pub fn audience(subject: &Subject, from: &str, is_receipt: bool) -> Audience {
    match subject {
        Subject::Inbox(user) => {
            if is_receipt || user.as_str() == from {
                Audience::Nobody
            } else {
                Audience::User(user.clone())
            }
        }
        Subject::Group(g) => match UserId::parse(from.to_string()) {
            Ok(sender) => Audience::GroupExcept {
                group: g.clone(),
                sender,
            },
            Err(_) => Audience::Nobody,
        },
        Subject::Notification { user, .. } => Audience::User(user.clone()),
    }
}

/// The latest message a push announces, before the preview preference is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latest {
    /// The conversation (stored subject); also the collapse id's source.
    pub subject: String,
    /// Its stream sequence.
    pub seq: u64,
    /// Sender (a message) or category (a notification).
    pub from: String,
    /// The group, for a group message.
    #[serde(default)]
    pub group: String,
    /// Text: the message's (when it is text) or the notification's title.
    #[serde(default)]
    pub title: String,
    /// The message text or the notification's body.
    #[serde(default)]
    pub body: String,
    /// What it is.
    pub kind: PushKind,
    /// When it was stored (ms since the Unix epoch).
    pub time_ms: u64,
}

impl Latest {
    /// What a push for `stored` (at `seq` on `subject`) would announce. Only text
    /// content becomes a preview; anything else reads "sent an attachment".
    pub fn from_stored(subject: &Subject, seq: u64, stored: &crate::wire::StoredMessage) -> Self {
        let (kind, title, body) = match &stored.notification {
            Some(n) => (
                PushKind::Notification(match n.priority {
                    1 => NotificationPriority::Low,
                    2 => NotificationPriority::High,
                    _ => NotificationPriority::Normal,
                }),
                n.title.clone(),
                n.body.clone(),
            ),
            None => {
                let text =
                    stored.content_type.is_empty() || stored.content_type.starts_with("text/");
                let body = match std::str::from_utf8(&stored.content) {
                    Ok(t) if text => t.to_string(),
                    _ => "sent an attachment".to_string(),
                };
                let kind = if subject.group().is_some() {
                    PushKind::Group
                } else {
                    PushKind::Direct
                };
                (kind, String::new(), body)
            }
        };
        Self {
            subject: subject.to_string(),
            seq,
            from: stored.from.to_string(),
            group: subject.group().map(|g| g.to_string()).unwrap_or_default(),
            title,
            body,
            kind,
            time_ms: stored.time_ms,
        }
    }
}

/// Longest preview text, in characters (a push payload is at most 4 KiB).
const PREVIEW_CHARS: usize = 140;

/// What one push says: the visible alert and the counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// Visible title.
    pub title: String,
    /// Visible body.
    pub body: String,
    /// Messages this push covers (a coalesced burst).
    pub count: u32,
    /// The device's undelivered messages.
    pub badge: u32,
    /// Collapse id: a later push for the same conversation replaces this one.
    pub collapse_id: String,
    /// The conversation.
    pub subject: String,
    /// The latest message's sequence.
    pub seq: u64,
    /// How urgent.
    pub urgency: Urgency,
}

impl Alert {
    /// The alert for `latest`, covering `count` messages, with `badge`. `show` is the
    /// resolved preview preference: without it no text or sender leaves the system.
    pub fn compose(latest: &Latest, count: u32, badge: u32, show: bool) -> Self {
        let count = count.max(1);
        let (title, body) = if show {
            let who = match (&latest.kind, latest.group.is_empty()) {
                (PushKind::Notification(_), _) => latest.title.clone(),
                (_, true) => latest.from.clone(),
                (_, false) => format!("{} in {}", latest.from, latest.group),
            };
            let mut body = clip(&latest.body, PREVIEW_CHARS);
            if count > 1 {
                body = format!("{body} (+{} more)", count - 1);
            }
            (who, body)
        } else {
            let what = match latest.kind {
                PushKind::Notification(_) => "New notification",
                _ => "New message",
            };
            let body = if count > 1 {
                format!("{count} new messages")
            } else {
                what.to_string()
            };
            ("Petrel".to_string(), body)
        };
        Self {
            title,
            body,
            count,
            badge,
            collapse_id: collapse_id(&latest.subject),
            subject: if show {
                latest.subject.clone()
            } else {
                String::new()
            },
            seq: latest.seq,
            urgency: latest.kind.urgency(),
        }
    }
}

fn clip(s: &str, chars: usize) -> String {
    match s.char_indices().nth(chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A collapse id for `subject` that fits every provider: APNs (64 bytes), FCM, and
/// Web Push's `Topic` (32 characters of the base64url alphabet). It hides the
/// conversation's name: a hash, not the subject.
pub fn collapse_id(subject: &str) -> String {
    // FNV-1a, 64 bits, twice with different bases: 22 base64url characters.
    let h = |basis: u64| {
        subject.bytes().fold(basis, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&h(0xcbf2_9ce4_8422_2325).to_be_bytes());
    raw[8..].copy_from_slice(&h(0x8422_2325_cbf2_9ce4).to_be_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Retry policy for a provider answering 429 or 5xx: exponential from `first`, capped
/// at `max`, or what the provider's `Retry-After` asks (capped too).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub first: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Attempts in all (the first included) before the message is dead-lettered.
    pub attempts: u32,
}

impl Backoff {
    /// The delay before attempt `n + 1` after attempt `n` (1-based) failed; `None`
    /// when no attempt is left.
    pub fn next(&self, n: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if n >= self.attempts {
            return None;
        }
        let exp = self
            .first
            .saturating_mul(1u32 << (n.saturating_sub(1)).min(16));
        Some(retry_after.unwrap_or(exp).min(self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apns(token: &str) -> PushTarget {
        PushTarget::Apns {
            token: token.into(),
            topic: "com.example.app".into(),
            sandbox: false,
        }
    }

    fn reg(t: PushTarget, at: u64) -> Registration {
        Registration::new(t, "en-GB".into(), Preview::Default, at).unwrap()
    }

    fn dev(d: &str) -> DeviceId {
        DeviceId::parse(d.to_string()).unwrap()
    }

    #[test]
    fn targets_are_checked() {
        assert!(apns("00ff").validate().is_ok());
        assert!(apns("zz").validate().is_err());
        assert!(apns("").validate().is_err());
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([4u8; 65]);
        let auth = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([1u8; 16]);
        let wp = |e: &str, k: &str, a: &str| PushTarget::WebPush {
            endpoint: e.into(),
            p256dh: k.into(),
            auth: a.into(),
        };
        assert!(wp("https://push.example/x", &key, &auth).validate().is_ok());
        assert!(wp("ftp://push.example/x", &key, &auth).validate().is_err());
        assert!(
            wp("https://push.example/x", &auth, &auth)
                .validate()
                .is_err()
        );
        assert!(wp("https://push.example/x", &key, &key).validate().is_err());
        assert!(
            PushTarget::Fcm {
                token: "a b".into()
            }
            .validate()
            .is_err()
        );
        assert!(Registration::new(apns("00"), "en GB".into(), Preview::Show, 0).is_err());
    }

    #[test]
    fn registering_replaces_and_moves_tokens() {
        let mut d = Devices::default();
        assert!(d.set(&dev("phone"), Some(reg(apns("01"), 1))));
        assert!(
            !d.set(&dev("phone"), Some(reg(apns("01"), 2))),
            "same again: no write"
        );
        assert!(d.set(&dev("phone"), Some(reg(apns("02"), 3))));
        assert_eq!(d.devices.len(), 1);
        // The token moves to a reinstalled app's new device id.
        assert!(d.set(&dev("phone2"), Some(reg(apns("02"), 4))));
        assert_eq!(d.devices.keys().collect::<Vec<_>>(), ["phone2"]);
        assert!(d.set(&dev("phone2"), None));
        assert!(d.devices.is_empty());
        let round = Devices::decode(&d.encode()).unwrap();
        assert_eq!(round, d);
    }

    #[test]
    fn the_oldest_device_goes_beyond_the_cap() {
        let mut d = Devices::default();
        for i in 0..=MAX_DEVICES_PER_USER {
            d.set(
                &dev(&format!("d{i}")),
                Some(reg(apns(&format!("{i:02x}")), i as u64)),
            );
        }
        assert_eq!(d.devices.len(), MAX_DEVICES_PER_USER);
        assert!(!d.devices.contains_key("d0"));
    }

    #[test]
    fn pruning_spares_a_newer_token() {
        let mut d = Devices::default();
        d.set(&dev("phone"), Some(reg(apns("02"), 1)));
        assert!(!d.prune("phone", &apns("01")));
        assert!(d.prune("phone", &apns("02")));
    }

    #[test]
    fn nobody_is_woken_by_their_own_message_or_a_receipt() {
        let bob = Subject::parse("msg.private.bob").unwrap();
        assert_eq!(audience(&bob, "bob", false), Audience::Nobody);
        assert_eq!(audience(&bob, "alice", true), Audience::Nobody);
        assert!(matches!(audience(&bob, "alice", false), Audience::User(u) if u.as_str() == "bob"));
        let g = Subject::parse("msg.group.team").unwrap();
        assert!(
            matches!(audience(&g, "carol", false), Audience::GroupExcept { sender, .. } if sender.as_str() == "carol")
        );
    }

    fn latest() -> Latest {
        Latest {
            subject: "msg.private.bob".into(),
            seq: 7,
            from: "alice".into(),
            group: String::new(),
            title: String::new(),
            body: "hi".into(),
            kind: PushKind::Direct,
            time_ms: 0,
        }
    }

    #[test]
    fn preview_decides_whether_text_leaves() {
        let shown = Alert::compose(&latest(), 1, 3, true);
        assert_eq!((shown.title.as_str(), shown.body.as_str()), ("alice", "hi"));
        let hidden = Alert::compose(&latest(), 5, 5, false);
        assert!(!format!("{hidden:?}").contains("alice"));
        assert!(!format!("{hidden:?}").contains("hi\""));
        assert_eq!(hidden.body, "5 new messages");
        assert_eq!(hidden.urgency, Urgency::High);
    }

    #[test]
    fn collapse_ids_fit_every_provider() {
        let a = collapse_id("msg.private.bob");
        assert_eq!(a.len(), 22);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(a, collapse_id("msg.private.carol"));
    }

    #[test]
    fn backoff_honours_retry_after_and_gives_up() {
        let b = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(5),
            attempts: 3,
        };
        assert_eq!(b.next(1, None), Some(Duration::from_millis(100)));
        assert_eq!(b.next(2, None), Some(Duration::from_millis(200)));
        assert_eq!(
            b.next(2, Some(Duration::from_secs(60))),
            Some(Duration::from_secs(5))
        );
        assert_eq!(b.next(3, None), None);
    }
}
