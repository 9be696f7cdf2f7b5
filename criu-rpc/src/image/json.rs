//! Any decoded entry as JSON, through protobuf reflection: field names as
//! in CRIU's protos (so as crit prints them), enums by name, bytes as a
//! string when they are printable text and as hex otherwise. Fields the
//! schema does not know are left out.

use protobuf::reflect::{ReflectFieldRef, ReflectValueRef};
use protobuf::MessageDyn;
use serde_json::{Map, Value};

pub fn message(m: &dyn MessageDyn) -> Value {
    let d = m.descriptor_dyn();
    let mut out = Map::new();
    for f in d.fields() {
        match f.get_reflect(m) {
            ReflectFieldRef::Optional(o) => {
                if let Some(v) = o.value() {
                    out.insert(f.name().to_string(), value(v));
                }
            }
            ReflectFieldRef::Repeated(r) => {
                if !r.is_empty() {
                    out.insert(
                        f.name().to_string(),
                        Value::Array(r.into_iter().map(value).collect()),
                    );
                }
            }
            ReflectFieldRef::Map(_) => {}
        }
    }
    Value::Object(out)
}

fn value(v: ReflectValueRef<'_>) -> Value {
    match v {
        ReflectValueRef::U32(n) => n.into(),
        ReflectValueRef::U64(n) => n.into(),
        ReflectValueRef::I32(n) => n.into(),
        ReflectValueRef::I64(n) => n.into(),
        ReflectValueRef::F32(n) => n.into(),
        ReflectValueRef::F64(n) => n.into(),
        ReflectValueRef::Bool(b) => b.into(),
        ReflectValueRef::String(s) => s.into(),
        ReflectValueRef::Bytes(b) => bytes(b),
        ReflectValueRef::Enum(d, n) => match d.value_by_number(n) {
            Some(v) => v.name().into(),
            None => n.into(),
        },
        ReflectValueRef::Message(m) => message(&*m),
    }
}

/// Text when it is text (a unix socket's path, without the NUL that ends
/// it; a leading NUL, an abstract name, shown as `@` as ss does), hex
/// otherwise.
pub fn bytes(b: &[u8]) -> Value {
    let Ok(s) = std::str::from_utf8(b) else {
        return hex(b).into();
    };
    let (abstract_name, rest) = match s.strip_prefix('\0') {
        Some(rest) => (true, rest),
        None => (false, s.trim_end_matches('\0')),
    };
    if rest.chars().any(|c| c.is_control()) {
        hex(b).into()
    } else if abstract_name {
        format!("@{rest}").into()
    } else {
        rest.into()
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
