use super::*;

#[test]
fn a_failed_dial_names_each_endpoint_with_its_error_and_cause() {
    let not_found = std::io::Error::new(std::io::ErrorKind::NotFound, "no such host");
    let failures = DialFailures(vec![
        ("gw.example:7443".into(), DialError::Resolve(not_found)),
        ("10.0.0.1:7443".into(), DialError::QuicTimeout),
    ]);
    assert_eq!(
        failures.to_string(),
        "gw.example:7443: cannot resolve the endpoint: no such host; \
         10.0.0.1:7443: QUIC handshake timed out"
    );
    assert_eq!(DialFailures::default().to_string(), "");
}
