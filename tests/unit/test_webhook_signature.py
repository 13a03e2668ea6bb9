"""The signature helper documented for webhook receivers."""

from __future__ import annotations

from app.services.webhooks import sign, verify

SECRET, BODY, NOW = "whsec_test", b'{"type": "job.succeeded"}', 1_764_288_000


def test_a_fresh_signature_verifies() -> None:
    assert verify(SECRET, sign(SECRET, NOW, BODY), BODY, now=NOW + 299)


def test_a_changed_body_wrong_secret_or_old_timestamp_is_refused() -> None:
    header = sign(SECRET, NOW, BODY)
    assert not verify(SECRET, header, BODY + b" ", now=NOW)
    assert not verify("another secret", header, BODY, now=NOW)
    assert not verify(SECRET, header, BODY, now=NOW + 301)
    assert not verify(SECRET, header, BODY, now=NOW - 301)


def test_a_malformed_header_is_refused() -> None:
    for header in ("", "t=abc,v1=00", "v1=00", f"t={NOW}", f"t={NOW},v1=" + "0" * 64):
        assert not verify(SECRET, header, BODY, now=NOW)


def test_after_a_rotation_both_secrets_sign_and_either_verifies() -> None:
    header = sign(("new secret", SECRET), NOW, BODY)
    assert header.count("v1=") == 2
    assert verify("new secret", header, BODY, now=NOW)
    assert verify(SECRET, header, BODY, now=NOW)
    assert not verify("a third secret", header, BODY, now=NOW)
