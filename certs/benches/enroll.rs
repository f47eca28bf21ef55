//! Enrollment on the gateway's side, without the network: checking a device's CSR and issuing its
//! certificate, and the whole EST body path (base64 → CSR check → signing → PKCS#7 → base64).
//!
//! `cargo bench -p rxgate-certs --bench enroll` (add `-- --quick` for a short run). Throughput is
//! reported in requests per second. End-to-end enrollments/s over HTTPS are printed by
//! `cargo bench -p rxgate-e2e --bench e2e`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rxgate_certs::{
    CertificateAuthority, DeviceProfile, KeyAlg, base64, check_csr, new_device_csr, pkcs7,
};
use std::time::Duration;
use time::macros::datetime;

const DEVICE: &str = "fridge-01";

fn profile() -> DeviceProfile {
    DeviceProfile {
        site: "store-0042".to_owned(),
        kind: "fridge".to_owned(),
        device_id: DEVICE.to_owned(),
        validity: Duration::from_secs(30 * 24 * 3600),
        backdate: Duration::from_secs(3600),
        now: datetime!(2026-05-01 09:00 UTC),
    }
}

fn enroll(c: &mut Criterion) {
    let ca = CertificateAuthority::generate("rxgate bench CA", datetime!(2026-01-01 00:00 UTC))
        .expect("CA");
    let profile = profile();
    let csrs = [
        ("p256", new_device_csr(DEVICE, KeyAlg::P256).expect("csr").1),
        ("p384", new_device_csr(DEVICE, KeyAlg::P384).expect("csr").1),
        (
            "ed25519",
            new_device_csr(DEVICE, KeyAlg::Ed25519).expect("csr").1,
        ),
    ];

    let mut group = c.benchmark_group("csr_check");
    group.throughput(Throughput::Elements(1));
    for (name, der) in &csrs {
        group.bench_function(*name, |b| {
            b.iter(|| check_csr(black_box(der)).expect("valid CSR"))
        });
    }
    // An RSA-2048 request made by OpenSSL (testdata/generate.sh); its CN is not a device here,
    // so only the check is measured.
    let rsa = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/rsa2048.der"))
        .expect("testdata/rsa2048.der");
    group.bench_function("rsa2048", |b| {
        b.iter(|| check_csr(black_box(&rsa)).expect("valid CSR"))
    });
    group.finish();

    let mut group = c.benchmark_group("issue_device");
    group.throughput(Throughput::Elements(1));
    for (name, der) in &csrs {
        let checked = check_csr(der).expect("valid CSR");
        group.bench_function(*name, |b| {
            b.iter(|| {
                ca.issue_device(black_box(&checked), &profile)
                    .expect("issued")
            })
        });
    }
    group.finish();

    // What `simpleenroll` does with a request body once the token is checked.
    let body = base64::encode_body(&csrs[0].1);
    let mut group = c.benchmark_group("est_simpleenroll_body");
    group.throughput(Throughput::Elements(1));
    group.bench_function("p256", |b| {
        b.iter(|| {
            let der = base64::decode_body(black_box(body.as_bytes())).expect("base64");
            let checked = check_csr(&der).expect("valid CSR");
            let issued = ca.issue_device(&checked, &profile).expect("issued");
            let p7 = pkcs7::certs_only(&[issued.der]).expect("pkcs7");
            base64::encode_body(&p7)
        })
    });
    group.finish();
}

criterion_group!(benches, enroll);
criterion_main!(benches);
