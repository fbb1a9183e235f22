//! A response body of the `GET /users/{uuid}` shape written by poem-openapi's
//! `Json` (through a `serde_json::Value` tree) and by our `JsonBody` (serde in
//! one pass). `cargo bench -p benches --bench json_body`.

#![allow(missing_docs)]

use std::hint::black_box;

use adapters::http::JsonBody;
use criterion::{Criterion, criterion_group, criterion_main};
use poem::IntoResponse;
use poem_openapi::Object;
use poem_openapi::payload::Json;
use serde::Serialize;

#[derive(Debug, Clone, Object, Serialize)]
struct UserDto {
    id: i64,
    uuid: String,
    first_name: String,
    last_name: String,
    email: String,
}

fn user() -> UserDto {
    UserDto {
        id: 1,
        uuid: "550e8400-e29b-41d4-a716-446655440001".into(),
        first_name: "John".into(),
        last_name: "Doe".into(),
        email: "john.doe@example.com".into(),
    }
}

fn bodies(c: &mut Criterion) {
    let mut group = c.benchmark_group("http/user body");
    group.bench_function("raw poem-openapi Json (Value tree)", |b| {
        b.iter(|| Json(black_box(user())).into_response())
    });
    group.bench_function("JsonBody (serde)", |b| {
        b.iter(|| JsonBody(black_box(user())).into_response())
    });
    group.finish();
}

criterion_group!(benches, bodies);
criterion_main!(benches);
