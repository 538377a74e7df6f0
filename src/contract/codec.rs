//! The gRPC codec: prost's, except that a request prost cannot decode
//! (content nested past the recursion limit, invalid UTF-8 in a string, a
//! truncated field) is INVALID_ARGUMENT naming the field, as bad input
//! should be, not INTERNAL.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Used by the generated code (see `build.rs`).
#[derive(Debug, Clone, Copy)]
pub struct StrictCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        StrictCodec(PhantomData)
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// Prost's decoder with decode failures reported as bad input.
#[derive(Debug)]
pub struct StrictDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            if status.code() == Code::Internal {
                Status::invalid_argument(describe(status.message()))
            } else {
                status
            }
        })
    }

    /// A 1 KiB starting buffer instead of tonic's 8 KiB: the bridge holds
    /// one response stream per connected user, and its events are a few
    /// hundred bytes (the buffer grows for larger ones). 32 KiB is tonic's
    /// default yield threshold.
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(1024, 32 * 1024)
    }
}

/// `failed to decode Protobuf message: Struct.fields: Value.kind: …
/// CreateNotificationRequest.content: recursion limit reached` becomes
/// `content: malformed (recursion limit reached)`. prost lists the path
/// innermost first, so the request's own field is the last before the reason.
/// A field named by a Rust keyword comes as a raw identifier
/// (`CreateNotificationRequest.r#type`), which is still the field `type`.
fn describe(message: &str) -> String {
    let detail = message.trim_start_matches("failed to decode Protobuf message: ");
    let parts: Vec<&str> = detail.split(": ").collect();
    let is_path = |part: &&str| {
        part.split_once('.').is_some_and(|(message, field)| {
            let field = field.strip_prefix("r#").unwrap_or(field);
            !message.is_empty()
                && !field.is_empty()
                && message
                    .chars()
                    .chain(field.chars())
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        })
    };
    match parts.iter().rposition(is_path) {
        Some(index) => {
            let field = parts[index].rsplit('.').next().unwrap_or("request");
            let field = field.strip_prefix("r#").unwrap_or(field);
            let reason = parts[index + 1..].join(": ");
            format!("{}: malformed ({reason})", camel_case(field))
        }
        None => format!("request: malformed ({detail})"),
    }
}

/// `idempotency_key` → `idempotencyKey`, as the contract's JSON spells it.
fn camel_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn decode_errors_name_the_request_field() {
        assert_eq!(
            super::describe(
                "failed to decode Protobuf message: Struct.fields: Value.kind: \
                 CreateNotificationRequest.content: recursion limit reached"
            ),
            "content: malformed (recursion limit reached)"
        );
        assert_eq!(
            super::describe(
                "failed to decode Protobuf message: CreateNotificationRequest.idempotency_key: invalid string value: data is not UTF-8 encoded"
            ),
            "idempotencyKey: malformed (invalid string value: data is not UTF-8 encoded)"
        );
        // prost names a field spelled like a Rust keyword as a raw identifier.
        assert_eq!(
            super::describe(
                "failed to decode Protobuf message: CreateNotificationRequest.r#type: invalid string value: data is not UTF-8 encoded"
            ),
            "type: malformed (invalid string value: data is not UTF-8 encoded)"
        );
        assert_eq!(
            super::describe(
                "failed to decode Protobuf message: CreateNotificationsRequest.r#type: buffer underflow"
            ),
            "type: malformed (buffer underflow)"
        );
        assert_eq!(
            super::describe("failed to decode Protobuf message: invalid tag value: 0"),
            "request: malformed (invalid tag value: 0)"
        );
    }
}
