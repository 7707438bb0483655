//! CIDR lists, tokens and the unverified JWT peek, Directus-compatible argon2 hashes.

use super::*;

#[test]
fn networks() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(ip_in_networks(ip("10.1.2.3"), "192.168.0.1, 10.0.0.0/8"));
    assert!(!ip_in_networks(ip("11.1.2.3"), "10.0.0.0/8"));
    assert!(ip_in_networks(ip("::1"), "::1"));
    assert!(ip_in_networks(ip("2001:db8::5"), "2001:db8::/32"));
    assert!(!ip_in_networks(ip("10.0.0.1"), "garbage,/,10.0.0.0/99"));
    // Host bits in the network address are ignored; /0 is everything of that family.
    assert!(ip_in_networks(ip("10.9.8.7"), "10.1.2.3/8"));
    assert!(ip_in_networks(ip("203.0.113.9"), "0.0.0.0/0"));
    assert!(ip_in_networks(ip("2001:db8::1"), "::/0"));
    assert!(!ip_in_networks(ip("10.0.0.1"), "::/0"));
    assert!(!ip_in_networks(ip("::ffff:10.0.0.1"), "10.0.0.0/8"));
    // Boundaries, exact hosts, and whitespace or empty entries.
    assert!(ip_in_networks(ip("192.168.1.255"), "192.168.1.0/24"));
    assert!(!ip_in_networks(ip("192.168.2.0"), "192.168.1.0/24"));
    assert!(ip_in_networks(ip("192.168.1.7"), " , 192.168.1.7/32 ,"));
    assert!(!ip_in_networks(ip("192.168.1.8"), "192.168.1.7/32"));
    assert!(!ip_in_networks(ip("2001:db9::1"), "2001:db8::/32"));
    assert!(!ip_in_networks(ip("10.0.0.1"), ""));
    // Malformed entries are skipped, later good ones still count.
    assert!(ip_in_networks(
        ip("10.0.0.1"),
        "10.0.0.0/33, 10.0.0.0/-1, x/8, 10.0.0.0/8"
    ));
    assert!(!ip_in_networks(
        ip("10.0.0.1"),
        "010.0.0.0/8, 10.0.0.0/, 10.0.0.0/8/8"
    ));
    assert!(ip_in_networks(ip("10.0.0.1"), "10.0.0.0/08"));
}

#[test]
fn tokens_and_jwt_peek() {
    let t = random_token(64);
    assert_eq!(t.len(), 64);
    assert!(t.bytes().all(|b| NANOID_ALPHABET.contains(&b)));
    assert!(!is_directus_jwt("static-token"));
    assert!(!is_directus_jwt("a.b.c"));
    assert!(!is_directus_jwt(""));
    // The payload (middle part) of a token signed with some other key.
    let payload = |claims: Json| {
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"another secret"),
        )
        .unwrap();
        t.split('.').nth(1).unwrap().to_owned()
    };
    let directus = payload(serde_json::json!({"iss": "directus", "exp": 1}));
    assert!(is_directus_jwt(&format!("x.{directus}.y")), "unverified");
    assert!(
        is_directus_jwt(&format!("x.{directus}==.y")),
        "padding tolerated"
    );
    assert!(
        is_directus_jwt(&format!(".{directus}.")),
        "empty header and signature"
    );
    assert!(!is_directus_jwt(&format!("x.{directus}.y.z")));
    assert!(!is_directus_jwt(&format!("x.x.{directus}.y")));
    assert!(!is_directus_jwt(&format!("x.{directus}")));
    assert!(!is_directus_jwt(&format!("x.{directus}!.y")));
    for other in [
        serde_json::json!({"iss": "other"}),
        serde_json::json!({"iss": 1}),
        serde_json::json!({"exp": 1}),
        serde_json::json!("directus"),
    ] {
        assert!(!is_directus_jwt(&format!("x.{}.y", payload(other))));
    }
    // base64url of `not json`.
    assert!(!is_directus_jwt("x.bm90IGpzb24.y"));
}

#[tokio::test]
async fn argon2_round_trip_and_directus_hash() {
    let h = hash_password("secret".into()).await.unwrap();
    assert!(h.starts_with("$argon2id$v=19$m=65536,t=3,p=4$"));
    assert!(verify_password(h.clone(), "secret".into()).await);
    assert!(!verify_password(h, "wrong".into()).await);
    assert!(!verify_password("not a hash".into(), "x".into()).await);
}
