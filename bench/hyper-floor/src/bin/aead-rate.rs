//! bench/run's measure of one AES-128-GCM pass: the rate at which ring (the crate
//! rustls runs Keyway's TLS on) seals and opens 16 KiB records, TLS's largest, on
//! this core. Prints GB/s for a pass, sealing and opening taking turns: the agent
//! path's floor adds four such passes a byte.
//!
//! OpenSSL's `openssl speed` is not this figure: on a CPU with VAES and VPCLMULQDQ,
//! ring takes their 256-bit AVX2 code, which Debian's OpenSSL 3.0 does not have.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use std::time::{Duration, Instant};

const RECORD: usize = 16 * 1024;
const FOR: Duration = Duration::from_secs(2);

fn main() -> Result<(), ring::error::Unspecified> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[7u8; 16])?);
    let mut record = vec![1u8; RECORD];
    let nonce = |seq: u64| {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&seq.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    };
    let started = Instant::now();
    let mut seq = 0u64;
    while started.elapsed() < FOR {
        for _ in 0..64 {
            let tag = key.seal_in_place_separate_tag(nonce(seq), Aad::empty(), &mut record)?;
            record.extend_from_slice(tag.as_ref());
            let opened = key
                .open_in_place(nonce(seq), Aad::empty(), &mut record)?
                .len();
            record.truncate(opened);
            seq += 1;
        }
    }
    let passes = (seq * 2 * RECORD as u64) as f64;
    println!("{:.2}", passes / started.elapsed().as_secs_f64() / 1e9);
    Ok(())
}
