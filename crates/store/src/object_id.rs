//! ObjectIds made in-process: 4-byte seconds timestamp, 5 random bytes fixed
//! per process, 3-byte counter. Ids sort by creation second and need no
//! coordination between cores. Written here rather than pulled from `bson`,
//! which would bring a whole document model for twenty lines.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

struct Generator {
    process: [u8; 5],
    counter: AtomicU32,
}

fn generator() -> &'static Generator {
    static GENERATOR: OnceLock<Generator> = OnceLock::new();
    GENERATOR.get_or_init(|| Generator {
        process: rand::random(),
        counter: AtomicU32::new(rand::random::<u32>() & 0x00ff_ffff),
    })
}

/// A new id, 24 lowercase hex characters.
pub fn new_object_id() -> String {
    let generator = generator();
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0);
    let count = generator.counter.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&seconds.to_be_bytes());
    bytes[4..9].copy_from_slice(&generator.process);
    bytes[9..].copy_from_slice(&count.to_be_bytes()[1..]);
    let mut id = String::with_capacity(24);
    for byte in bytes {
        let _ = write!(id, "{byte:02x}");
    }
    id
}

/// The id in canonical (lowercase) form, or `None` if it is not 24 hex digits.
pub fn parse_object_id(text: &str) -> Option<String> {
    (text.len() == 24 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| text.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_24_lowercase_hex_and_distinct() {
        let a = new_object_id();
        let b = new_object_id();
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
        assert_ne!(a, b);
        assert_eq!(parse_object_id(&a.to_uppercase()), Some(a));
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "nope",
            "68553796000745d4620985b",
            "68553796000745d4620985bg",
        ] {
            assert_eq!(parse_object_id(bad), None, "{bad:?}");
        }
    }
}
