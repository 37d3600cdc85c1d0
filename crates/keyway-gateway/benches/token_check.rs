//! The in-process token check of every request: parse the presented token, keyed hash,
//! index lookup, liveness, path normalisation and the grant decision. Target: under
//! 1 µs median, with 1,000,000 tokens in the index.
//!
//! `cargo bench -p keyway-gateway --bench token_check`

#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use keyway_core::{path, Grant, IssuedToken, Pepper, TokenKind};
use keyway_gateway::index::TokenIndex;
use keyway_store::TokenRecord;
use secrecy::{ExposeSecret, SecretBox};

fn bench(c: &mut Criterion) {
    let pepper = Pepper::new(&SecretBox::new(Box::new([9u8; 32])));
    let grant = Grant::new("billing", &["GET".into()], &["/invoices/".into()]).unwrap();
    let index = TokenIndex::default();
    let mut probe = String::new();
    for i in 0..1_000_000 {
        let t = IssuedToken::generate(TokenKind::Access);
        if i == 5_000 {
            probe = t.secret().expose_secret().to_owned();
        }
        index.load_one(TokenRecord {
            id: t.id().to_owned(),
            kind: TokenKind::Access,
            principal: format!("user{i}"),
            grant: Some(grant.clone()),
            hash: t.hash(&pepper),
            created_at: 0,
            expires_at: i64::MAX,
            revoked_at: None,
            last_used_at: None,
            parent_id: None,
            scope: None,
            cert_thumbprint: None,
            origin: None,
        });
    }
    let now = 1_000;

    c.bench_function("token_check/allow", |b| {
        b.iter(|| {
            let entry = index
                .authenticate(&probe, &pepper, TokenKind::Access, now)
                .unwrap();
            let g = entry.grant().unwrap();
            let p = path::normalize("/invoices/2026/42", !g.restricts_paths()).unwrap();
            g.check("GET", &p).unwrap();
            entry.mark_used(now);
        })
    });
    // The probe with its last character (part of the checksum) changed: one that
    // already ended in `x` stays wrong with `y`.
    let last = if probe.ends_with('x') { 'y' } else { 'x' };
    let wrong = format!("{}{last}", &probe[..probe.len() - 1]);
    assert_ne!(wrong, probe);
    c.bench_function("token_check/bad_checksum", |b| {
        b.iter(|| {
            index
                .authenticate(&wrong, &pepper, TokenKind::Access, now)
                .unwrap_err()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
