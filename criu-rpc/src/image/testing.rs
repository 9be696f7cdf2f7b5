//! Helpers for tests that write synthetic images.

use protobuf::descriptor::field_descriptor_proto::Label;
use protobuf::reflect::{ReflectValueBox, ReflectValueRef, RuntimeFieldType, RuntimeType};
use protobuf::{MessageDyn, MessageFull};

/// CRIU writes every `required` field of an entry, and the decoder, like
/// CRIU's own (protobuf-c) and crit, refuses an entry that lacks one. Tests
/// set the fields they assert on; this gives the other required ones,
/// in nested entries too, their zero value (an enum its first), as an
/// image of a process that had them zero would.
pub(crate) fn complete(m: &mut dyn MessageDyn) {
    let d = m.descriptor_dyn();
    for f in d.fields() {
        let required = f.proto().label() == Label::LABEL_REQUIRED;
        match f.runtime_field_type() {
            RuntimeFieldType::Singular(RuntimeType::Message(_)) if required || f.has_field(m) => {
                complete(f.mut_message(m))
            }
            // An optional entry the test left out stays out.
            RuntimeFieldType::Singular(RuntimeType::Message(_)) => {}
            RuntimeFieldType::Singular(t) if required && !f.has_field(m) => {
                f.set_singular_field(m, zero(t))
            }
            RuntimeFieldType::Repeated(RuntimeType::Message(_)) => {
                let mut r = f.mut_repeated(m);
                for i in 0..r.len() {
                    let ReflectValueRef::Message(e) = r.get(i) else {
                        unreachable!("a repeated message field holds messages")
                    };
                    let mut e = e.clone_box();
                    complete(&mut *e);
                    r.set(i, ReflectValueBox::Message(e));
                }
            }
            _ => {}
        }
    }
}

fn zero(t: RuntimeType) -> ReflectValueBox {
    match t {
        RuntimeType::I32 => ReflectValueBox::I32(0),
        RuntimeType::I64 => ReflectValueBox::I64(0),
        RuntimeType::U32 => ReflectValueBox::U32(0),
        RuntimeType::U64 => ReflectValueBox::U64(0),
        RuntimeType::F32 => ReflectValueBox::F32(0.0),
        RuntimeType::F64 => ReflectValueBox::F64(0.0),
        RuntimeType::Bool => ReflectValueBox::Bool(false),
        RuntimeType::String => ReflectValueBox::String(String::new()),
        RuntimeType::VecU8 => ReflectValueBox::Bytes(Vec::new()),
        RuntimeType::Enum(e) => {
            let first = e.default_value().value();
            ReflectValueBox::Enum(e, first)
        }
        RuntimeType::Message(m) => ReflectValueBox::Message(m.new_instance()),
    }
}

/// `m`, [`complete`]d, encoded.
pub(crate) fn bytes<M: MessageFull>(m: &M) -> Vec<u8> {
    let mut m = m.clone();
    complete(&mut m);
    m.write_to_bytes().expect("a complete entry encodes")
}
