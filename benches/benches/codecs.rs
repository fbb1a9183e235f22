//! Codec encode and decode, and key building: the CPU work the typed cache adds
//! to every backend call. `cargo bench -p benches --bench codecs`.

#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ports::{Codec, JsonCodec, TextCodec, full_key};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A record shaped like the users the reference service caches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    id: i64,
    uuid: Uuid,
    name: String,
    email: String,
    active: bool,
}

fn record() -> Record {
    Record {
        id: 1_234_567,
        uuid: Uuid::from_u128(0x550e_8400_e29b_41d4_a716_4466_5544_0001),
        name: "Ada Lovelace".into(),
        email: "ada.lovelace@example.com".into(),
        active: true,
    }
}

fn text_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/text");
    let id = 1_234_567_i64;
    let id_bytes = <TextCodec as Codec<i64>>::encode(&id).expect("an i64 encodes");
    let uuid = record().uuid;
    let uuid_bytes = <TextCodec as Codec<Uuid>>::encode(&uuid).expect("a uuid encodes");
    group.bench_function("encode i64", |b| {
        b.iter(|| <TextCodec as Codec<i64>>::encode(black_box(&id)))
    });
    group.bench_function("decode i64", |b| {
        b.iter(|| <TextCodec as Codec<i64>>::decode(black_box(&id_bytes)))
    });
    group.bench_function("encode uuid", |b| {
        b.iter(|| <TextCodec as Codec<Uuid>>::encode(black_box(&uuid)))
    });
    group.bench_function("decode uuid", |b| {
        b.iter(|| <TextCodec as Codec<Uuid>>::decode(black_box(&uuid_bytes)))
    });
    group.finish();
}

fn json_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/json");
    let value = record();
    let bytes = <JsonCodec as Codec<Record>>::encode(&value).expect("a record encodes");
    group.bench_function("encode record", |b| {
        b.iter(|| <JsonCodec as Codec<Record>>::encode(black_box(&value)))
    });
    group.bench_function("decode record", |b| {
        b.iter(|| <JsonCodec as Codec<Record>>::decode(black_box(&bytes)))
    });
    let id = 1_234_567_i64;
    let id_bytes = <JsonCodec as Codec<i64>>::encode(&id).expect("an i64 encodes");
    group.bench_function("encode i64", |b| {
        b.iter(|| <JsonCodec as Codec<i64>>::encode(black_box(&id)))
    });
    group.bench_function("decode i64", |b| {
        b.iter(|| <JsonCodec as Codec<i64>>::decode(black_box(&id_bytes)))
    });
    group.finish();
}

fn keys(c: &mut Criterion) {
    let mut group = c.benchmark_group("key");
    group.bench_function("integer", |b| {
        b.iter(|| full_key(black_box("user:id-to-uuid"), black_box(&1_234_567_i64)))
    });
    group.bench_function("plain string", |b| {
        b.iter(|| full_key(black_box("session"), black_box("d41d8cd98f00b204e980")))
    });
    group.bench_function("string needing escapes", |b| {
        b.iter(|| full_key(black_box("session"), black_box("a:b*c d{e}%f")))
    });
    group.finish();
}

criterion_group!(benches, text_codec, json_codec, keys);
criterion_main!(benches);
