//! Round trips and known encodings of AMQP values.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keybus_amqp::{Bytes, BytesMut, DecodeError, Descriptor, Symbol, Value, map_get};

fn enc(v: &Value) -> Vec<u8> {
    let mut b = BytesMut::new();
    v.encode(&mut b);
    assert_eq!(b.len(), v.encoded_size(), "encoded_size mismatch for {v:?}");
    b.to_vec()
}

fn rt(v: Value) {
    let bytes = enc(&v);
    let mut input: &[u8] = &bytes;
    let back = Value::decode(&mut input).unwrap();
    assert!(input.is_empty(), "left over bytes for {v:?}");
    assert_eq!(back, v);
    // Bytes path (zero-copy binaries) gives the same value.
    let (back2, used) = Value::decode_bytes(&Bytes::from(bytes.clone())).unwrap();
    assert_eq!(used, bytes.len());
    assert_eq!(back2, v);
}

fn dec(bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut input = bytes;
    Value::decode(&mut input)
}

fn described(code: u64, v: Value) -> Value {
    Value::Described(Box::new(Descriptor::Code(code)), Box::new(v))
}

#[test]
fn primitives_round_trip() {
    let vals = vec![
        Value::Null,
        Value::Bool(true),
        Value::Bool(false),
        Value::Ubyte(0),
        Value::Ubyte(255),
        Value::Ushort(0),
        Value::Ushort(u16::MAX),
        Value::Uint(0),
        Value::Uint(1),
        Value::Uint(255),
        Value::Uint(256),
        Value::Uint(u32::MAX - 1),
        Value::Uint(u32::MAX),
        Value::Ulong(0),
        Value::Ulong(255),
        Value::Ulong(256),
        Value::Ulong(u64::MAX),
        Value::Byte(i8::MIN),
        Value::Byte(i8::MAX),
        Value::Short(i16::MIN),
        Value::Short(i16::MAX),
        Value::Int(0),
        Value::Int(-128),
        Value::Int(127),
        Value::Int(128),
        Value::Int(-129),
        Value::Int(i32::MIN),
        Value::Int(i32::MAX),
        Value::Long(0),
        Value::Long(-128),
        Value::Long(127),
        Value::Long(128),
        Value::Long(i64::MIN),
        Value::Long(i64::MAX),
        Value::Float(0.0),
        Value::Float(-1.5),
        Value::Float(f32::MAX),
        Value::Float(f32::INFINITY),
        Value::Double(f64::MIN_POSITIVE),
        Value::Double(f64::NEG_INFINITY),
        Value::Decimal32([1, 2, 3, 4]),
        Value::Decimal64([1, 2, 3, 4, 5, 6, 7, 8]),
        Value::Decimal128([9; 16]),
        Value::Char('a'),
        Value::Char('\u{10FFFF}'),
        Value::Char('é'),
        Value::Timestamp(0),
        Value::Timestamp(-1),
        Value::Timestamp(1_700_000_000_000),
        Value::Timestamp(i64::MIN),
        Value::Uuid([0xab; 16]),
        Value::Binary(Bytes::new()),
        Value::Binary(Bytes::from(vec![7u8; 255])),
        Value::Binary(Bytes::from(vec![7u8; 256])),
        Value::Binary(Bytes::from(vec![1u8; 70_000])),
        Value::String(String::new()),
        Value::String("héllo".into()),
        Value::String("x".repeat(255)),
        Value::String("x".repeat(256)),
        Value::Symbol(Symbol::from("amqp:not-found")),
        Value::Symbol(Symbol::from("s".repeat(300).as_str())),
    ];
    for v in vals {
        rt(v);
    }
    // NaN round-trips bit-exactly even though it is not PartialEq-equal.
    let b = enc(&Value::Double(f64::NAN));
    match dec(&b).unwrap() {
        Value::Double(d) => assert!(d.is_nan()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn smallest_encodings() {
    assert_eq!(enc(&Value::Uint(0)), [0x43]);
    assert_eq!(enc(&Value::Uint(7)), [0x52, 7]);
    assert_eq!(enc(&Value::Uint(0x1234)), [0x70, 0, 0, 0x12, 0x34]);
    assert_eq!(enc(&Value::Ulong(0)), [0x44]);
    assert_eq!(enc(&Value::Ulong(9)), [0x53, 9]);
    assert_eq!(enc(&Value::Int(-2)), [0x54, 0xfe]);
    assert_eq!(enc(&Value::Long(-2)), [0x55, 0xfe]);
    assert_eq!(enc(&Value::Bool(true)), [0x41]);
    assert_eq!(enc(&Value::Bool(false)), [0x42]);
    assert_eq!(enc(&Value::String("ab".into())), [0xa1, 2, b'a', b'b']);
    assert_eq!(enc(&Value::Symbol("ab".into())), [0xa3, 2, b'a', b'b']);
    assert_eq!(
        enc(&Value::Binary(Bytes::from_static(b"ab"))),
        [0xa0, 2, b'a', b'b']
    );
    assert_eq!(
        enc(&Value::String("x".repeat(256)))[..5],
        [0xb1, 0, 0, 1, 0]
    );
    assert_eq!(enc(&Value::List(vec![])), [0x45]);
    assert_eq!(enc(&Value::List(vec![Value::Null])), [0xc0, 2, 1, 0x40]);
    assert_eq!(enc(&Value::Map(vec![])), [0xc1, 1, 0]);
    assert_eq!(
        enc(&Value::Map(vec![(Value::symbol("a"), Value::Uint(1))])),
        [0xc1, 6, 2, 0xa3, 1, b'a', 0x52, 1]
    );
    assert_eq!(
        enc(&Value::Array(vec![Value::symbol("a"), Value::symbol("bc")])),
        [0xe0, 7, 2, 0xa3, 1, b'a', 2, b'b', b'c']
    );
    assert_eq!(enc(&Value::Array(vec![])), [0xe0, 2, 0, 0x40]);
    assert_eq!(
        enc(&described(0x24, Value::List(vec![]))),
        [0x00, 0x53, 0x24, 0x45]
    );
    // list8 boundary: 254 body bytes fit list8, 255 do not.
    let l = Value::List(vec![Value::Binary(Bytes::from(vec![0u8; 252]))]);
    assert_eq!(enc(&l)[0], 0xc0);
    let l = Value::List(vec![Value::Binary(Bytes::from(vec![0u8; 253]))]);
    assert_eq!(enc(&l)[0], 0xd0);
    let l = Value::List(vec![Value::Null; 256]);
    assert_eq!(enc(&l)[0], 0xd0);
}

#[test]
fn wide_forms_decode() {
    // uint, ulong, int and long in their wide forms; list32, map32, array32.
    assert_eq!(dec(&[0x70, 0, 0, 0, 5]).unwrap(), Value::Uint(5));
    assert_eq!(
        dec(&[0x80, 0, 0, 0, 0, 0, 0, 0, 5]).unwrap(),
        Value::Ulong(5)
    );
    assert_eq!(
        dec(&[0x71, 0xff, 0xff, 0xff, 0xff]).unwrap(),
        Value::Int(-1)
    );
    assert_eq!(dec(&[0x56, 1]).unwrap(), Value::Bool(true));
    assert_eq!(dec(&[0x56, 0]).unwrap(), Value::Bool(false));
    assert_eq!(
        dec(&[0xd0, 0, 0, 0, 6, 0, 0, 0, 2, 0x41, 0x43]).unwrap(),
        Value::List(vec![Value::Bool(true), Value::Uint(0)])
    );
    assert_eq!(
        dec(&[0xd1, 0, 0, 0, 6, 0, 0, 0, 2, 0x40, 0x41]).unwrap(),
        Value::Map(vec![(Value::Null, Value::Bool(true))])
    );
    assert_eq!(
        dec(&[0xf0, 0, 0, 0, 7, 0, 0, 0, 2, 0x50, 1, 2]).unwrap(),
        Value::Array(vec![Value::Ubyte(1), Value::Ubyte(2)])
    );
    assert_eq!(
        dec(&[0xb3, 0, 0, 0, 1, b'z']).unwrap(),
        Value::Symbol("z".into())
    );
}

#[test]
fn compounds_round_trip() {
    let big_list = Value::List((0..1000u32).map(Value::Uint).collect());
    let big_map = Value::Map(
        (0..500)
            .map(|i| (Value::String(format!("k{i}")), Value::Long(i)))
            .collect(),
    );
    let vals = vec![
        Value::List(vec![]),
        Value::Map(vec![]),
        Value::Array(vec![]),
        big_list.clone(),
        big_map.clone(),
        Value::List(vec![big_list.clone(), big_map.clone(), Value::Null]),
        // Maps keep order and duplicates.
        Value::Map(vec![
            (Value::symbol("a"), Value::Uint(1)),
            (Value::symbol("a"), Value::Uint(2)),
            (Value::Null, Value::List(vec![])),
        ]),
        Value::Array((0..300).map(Value::Uint).collect()),
        Value::Array(vec![Value::Uint(1), Value::Uint(2)]),
        Value::Array(vec![Value::Uint(1), Value::Uint(100_000)]),
        Value::Array(vec![Value::Ulong(1), Value::Ulong(u64::MAX)]),
        Value::Array(vec![Value::Int(-1), Value::Int(5)]),
        Value::Array(vec![Value::Int(-1), Value::Int(i32::MIN)]),
        Value::Array(vec![Value::Long(-1), Value::Long(5)]),
        Value::Array(vec![Value::Long(-1), Value::Long(i64::MAX)]),
        Value::Array(vec![Value::Bool(true), Value::Bool(false)]),
        Value::Array(vec![Value::Null, Value::Null]),
        Value::Array(vec![
            Value::String("a".into()),
            Value::String("x".repeat(300)),
        ]),
        Value::Array(vec![Value::Binary(Bytes::from_static(b"a"))]),
        Value::Array(vec![Value::Uuid([1; 16]), Value::Uuid([2; 16])]),
        Value::Array(vec![Value::Timestamp(1), Value::Timestamp(-1)]),
        Value::Array(vec![Value::Char('a'), Value::Char('€')]),
        Value::Array(vec![Value::Double(1.0), Value::Double(2.5)]),
        Value::Array(vec![Value::Float(1.0)]),
        Value::Array(vec![Value::Short(-5), Value::Short(5)]),
        Value::Array(vec![Value::Byte(-5)]),
        Value::Array(vec![Value::Ushort(5)]),
        Value::Array(vec![Value::Ubyte(5)]),
        Value::Array(vec![Value::Decimal32([1; 4])]),
        Value::Array(vec![Value::Decimal64([1; 8])]),
        Value::Array(vec![Value::Decimal128([1; 16])]),
        // Nested arrays, maps and lists inside arrays.
        Value::Array(vec![
            Value::Array(vec![Value::Uint(1)]),
            Value::Array(vec![Value::String("x".into()), Value::String("y".into())]),
            Value::Array(vec![]),
        ]),
        Value::Array(vec![
            Value::Map(vec![(Value::symbol("k"), Value::Int(1))]),
            Value::Map(vec![]),
        ]),
        Value::Array(vec![Value::List(vec![Value::Null]), Value::List(vec![])]),
        // Described elements share the descriptor.
        Value::Array(vec![
            described(0x77, Value::String("a".into())),
            described(0x77, Value::String("b".into())),
        ]),
        Value::Array(vec![
            Value::Described(
                Box::new(Descriptor::Symbol("com.microsoft:x".into())),
                Box::new(Value::Long(1)),
            ),
            Value::Described(
                Box::new(Descriptor::Symbol("com.microsoft:x".into())),
                Box::new(Value::Long(2)),
            ),
        ]),
        described(0, Value::Null),
        described(u64::MAX, Value::Uint(3)),
        Value::Described(
            Box::new(Descriptor::Symbol("com.microsoft:datetime-offset".into())),
            Box::new(Value::Long(637_000_000_000_000_000)),
        ),
        described(1, described(2, Value::List(vec![Value::Null]))),
    ];
    for v in vals {
        rt(v);
    }
}

#[test]
fn heterogeneous_array_encodes_as_list() {
    let v = Value::Array(vec![Value::Uint(1), Value::String("x".into())]);
    let b = enc(&v);
    assert_eq!(b[0], 0xc0);
    assert_eq!(
        dec(&b).unwrap(),
        Value::List(vec![Value::Uint(1), Value::String("x".into())])
    );
    let v = Value::Array(vec![described(1, Value::Null), described(2, Value::Null)]);
    assert_eq!(enc(&v)[0], 0xc0);
}

#[test]
fn described_array_decodes() {
    // array8 of 2 elements, constructor: described(0x77) string
    let bytes = [0xe0, 9, 2, 0x00, 0x53, 0x77, 0xa1, 1, b'a', 1, b'b'];
    assert_eq!(
        dec(&bytes).unwrap(),
        Value::Array(vec![
            described(0x77, Value::String("a".into())),
            described(0x77, Value::String("b".into())),
        ])
    );
    // array of maps (map8 element constructor)
    let bytes = [0xe0, 8, 2, 0xc1, 3, 2, 0x41, 0x42, 1, 0];
    assert_eq!(
        dec(&bytes).unwrap(),
        Value::Array(vec![
            Value::Map(vec![(Value::Bool(true), Value::Bool(false))]),
            Value::Map(vec![]),
        ])
    );
    // nested array8 elements
    let bytes = [0xe0, 9, 2, 0xe0, 3, 1, 0x50, 7, 2, 0, 0x40];
    assert_eq!(
        dec(&bytes).unwrap(),
        Value::Array(vec![
            Value::Array(vec![Value::Ubyte(7)]),
            Value::Array(vec![])
        ])
    );
}

#[test]
fn malformed_values() {
    assert!(matches!(
        dec(&[]),
        Err(DecodeError::UnexpectedEof { offset: 0 })
    ));
    assert_eq!(dec(&[0x99]), Err(DecodeError::InvalidConstructor(0x99)));
    assert!(matches!(
        dec(&[0xa1, 2, 0xff, 0xfe]),
        Err(DecodeError::InvalidUtf8 { .. })
    ));
    assert!(matches!(
        dec(&[0x73, 0, 0, 0xd8, 0]),
        Err(DecodeError::InvalidChar { .. })
    ));
    assert!(matches!(
        dec(&[0xc1, 2, 1, 0x40]),
        Err(DecodeError::OddMapCount { .. })
    ));
    // list whose size is bigger than its elements
    assert!(matches!(
        dec(&[0xc0, 3, 1, 0x40, 0x40]),
        Err(DecodeError::InvalidSize { .. })
    ));
    // list whose element overruns the declared size
    assert!(dec(&[0xc0, 2, 1, 0x52, 1]).is_err());
    // huge declared sizes/counts
    assert!(dec(&[0xd0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    assert!(dec(&[0xf0, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0x40]).is_err());
    assert!(dec(&[0xb0, 0xff, 0xff, 0xff, 0xff, 1]).is_err());
    // bad descriptor
    assert!(matches!(
        dec(&[0x00, 0x41, 0x40]),
        Err(DecodeError::InvalidDescriptor { .. })
    ));
    // every truncation of a valid compound
    let v = Value::Map(vec![
        (
            Value::symbol("x"),
            Value::List(vec![Value::Uint(300), Value::String("s".into())]),
        ),
        (
            Value::symbol("y"),
            Value::Array(vec![described(3, Value::Long(1000))]),
        ),
    ]);
    let b = enc(&v);
    for i in 0..b.len() {
        assert!(dec(&b[..i]).is_err(), "truncated at {i}");
    }
}

#[test]
fn depth_limit() {
    let mut v = Value::Null;
    for _ in 0..100 {
        v = Value::List(vec![v]);
    }
    let b = enc(&v);
    assert!(matches!(dec(&b), Err(DecodeError::TooDeep { .. })));
    let mut v = Value::Null;
    for _ in 0..60 {
        v = Value::List(vec![v]);
    }
    rt(v);
    // deeply nested described values
    let mut bytes = vec![];
    for _ in 0..10_000 {
        bytes.extend_from_slice(&[0x00, 0x53, 0x01]);
    }
    bytes.push(0x40);
    assert!(matches!(dec(&bytes), Err(DecodeError::TooDeep { .. })));
    // array constructor with many descriptors
    let mut bytes = vec![0xb0];
    let _ = bytes.pop();
    let mut arr = vec![0x00u8; 0];
    for _ in 0..200 {
        arr.extend_from_slice(&[0x00, 0x53, 0x01]);
    }
    arr.push(0x40);
    let mut bytes = vec![0xf0];
    bytes.extend_from_slice(&((arr.len() + 4) as u32).to_be_bytes());
    bytes.extend_from_slice(&1u32.to_be_bytes());
    bytes.extend_from_slice(&arr);
    assert!(matches!(dec(&bytes), Err(DecodeError::TooDeep { .. })));
}

#[test]
fn zero_width_array_count_is_bounded() {
    // 2^32-1 nulls in 9 bytes must not allocate; count > size is rejected.
    let bytes = [0xf0, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0x40];
    assert!(dec(&bytes).is_err());
    // a small legitimate zero-width array is fine
    assert_eq!(
        dec(&[0xe0, 2, 2, 0x40]).unwrap(),
        Value::Array(vec![Value::Null, Value::Null])
    );
}

#[test]
fn decode_advances_input() {
    let mut b = BytesMut::new();
    Value::Uint(1).encode(&mut b);
    Value::String("x".into()).encode(&mut b);
    let mut input: &[u8] = &b;
    assert_eq!(Value::decode(&mut input).unwrap(), Value::Uint(1));
    assert_eq!(input.len(), 3);
    assert_eq!(
        Value::decode(&mut input).unwrap(),
        Value::String("x".into())
    );
    assert!(input.is_empty());
}

#[test]
fn accessors() {
    assert_eq!(Value::String("a".into()).as_str(), Some("a"));
    assert_eq!(Value::symbol("a").as_str(), Some("a"));
    assert_eq!(Value::Uint(5).as_u32(), Some(5));
    assert_eq!(Value::Ubyte(5).as_u64(), Some(5));
    assert_eq!(Value::Ulong(5).as_u32(), None);
    assert_eq!(Value::Int(-5).as_i64(), Some(-5));
    assert_eq!(Value::Bool(true).as_bool(), Some(true));
    assert_eq!(Value::Null.as_bool(), None);
    let m = vec![
        (Value::symbol("a"), Value::Uint(1)),
        (Value::String("b".into()), Value::Uint(2)),
    ];
    assert_eq!(map_get(&m, "a"), Some(&Value::Uint(1)));
    assert_eq!(map_get(&m, "b"), Some(&Value::Uint(2)));
    assert_eq!(map_get(&m, "c"), None);
    let mv = Value::Map(m.clone());
    assert_eq!(mv.as_map().map(<[_]>::len), Some(2));
    assert_eq!(
        Value::List(vec![Value::Null]).as_list().map(<[_]>::len),
        Some(1)
    );
    let s = Symbol::from("x");
    assert_eq!(s.as_str(), "x");
    assert_eq!(s.to_string(), "x");
    assert_eq!(Value::from("s"), Value::String("s".into()));
    assert_eq!(Value::from(Some(3u32)), Value::Uint(3));
    assert_eq!(Value::from(None::<u32>), Value::Null);
}
