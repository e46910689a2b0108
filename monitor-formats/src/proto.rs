//! The protobuf wire format, as far as ONNX models and TensorFlow SavedModels need it: a
//! message is a sequence of (field number, value) pairs, read here without a schema compiler
//! (the few messages monitor looks at are decoded by hand, field by field, in onnx.rs and
//! static_analysis/graph.rs). Every read is bounds-checked: a damaged or hostile file is an
//! error, never a panic.

/// One field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    /// Length-delimited: a string, bytes, a packed array or an embedded message.
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl<'a> Value<'a> {
    pub fn bytes(self) -> Result<&'a [u8], ProtoError> {
        match self {
            Value::Bytes(b) => Ok(b),
            _ => Err(ProtoError::WireType),
        }
    }

    pub fn varint(self) -> Result<u64, ProtoError> {
        match self {
            Value::Varint(v) => Ok(v),
            _ => Err(ProtoError::WireType),
        }
    }

    /// UTF-8 text (a `string` field).
    pub fn text(self) -> Result<&'a str, ProtoError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| ProtoError::Utf8)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("the message ends inside a field")]
    Truncated,
    #[error("a varint longer than 10 bytes")]
    LongVarint,
    #[error("wire type {0} (groups or no type at all)")]
    BadWireType(u8),
    #[error("field number 0")]
    FieldZero,
    #[error("a field of the wrong wire type for its schema")]
    WireType,
    #[error("a string field that is not UTF-8")]
    Utf8,
    #[error("messages nested too deep")]
    TooDeep,
}

/// The fields of one message, in order.
pub struct Fields<'a> {
    data: &'a [u8],
    at: usize,
    failed: bool,
}

pub fn fields(data: &[u8]) -> Fields<'_> {
    Fields {
        data,
        at: 0,
        failed: false,
    }
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = *self.data.get(self.at).ok_or(ProtoError::Truncated)?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtoError::LongVarint)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let end = self.at.checked_add(n).ok_or(ProtoError::Truncated)?;
        let slice = self.data.get(self.at..end).ok_or(ProtoError::Truncated)?;
        self.at = end;
        Ok(slice)
    }

    fn next_field(&mut self) -> Result<(u32, Value<'a>), ProtoError> {
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| ProtoError::FieldZero)?;
        if number == 0 {
            return Err(ProtoError::FieldZero);
        }
        let value = match (key & 7) as u8 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| ProtoError::Truncated)?;
                Value::Bytes(self.take(len)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            )),
            other => return Err(ProtoError::BadWireType(other)),
        };
        Ok((number, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), ProtoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at >= self.data.len() {
            return None;
        }
        let field = self.next_field();
        self.failed = field.is_err();
        Some(field)
    }
}

/// Whether `data` reads as one whole message (every field well formed, to its last byte).
pub fn is_message(data: &[u8]) -> bool {
    fields(data).all(|f| f.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_and_damage_is_an_error() {
        // field 1 varint 150, field 2 "hi", field 3 fixed32.
        let msg = [0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i', 0x1d, 1, 0, 0, 0];
        let got: Vec<_> = fields(&msg).collect::<Result<_, _>>().unwrap();
        assert_eq!(got[0], (1, Value::Varint(150)));
        assert_eq!(got[1].1.text().unwrap(), "hi");
        assert_eq!(got[2], (3, Value::Fixed32(1)));
        assert!(!is_message(&msg[..6]));
        assert!(!is_message(&[0x0b]));
        assert!(!is_message(&[0x00, 0x01]));
        assert!(!is_message(&[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
        ]));
    }
}
