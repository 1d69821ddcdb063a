"""Which key opens what: an application's keys, their expiry, revocation and rotation grace, and
the scopes each endpoint documents. No services needed."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from vdip.applications import ALL_SCOPES, Application, ApplicationKey, Scope, generate_key, hash_key

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def key(secret: str, key_id: int = 1, scopes: tuple[Scope, ...] = ALL_SCOPES) -> ApplicationKey:
    return ApplicationKey(
        key_id=key_id,
        app_id="shop",
        name=f"key {key_id}",
        scopes=scopes,
        key_hash=hash_key(secret),
        expires_at=None,
        revoked_at=None,
        previous_key_hash=None,
        previous_key_expires_at=None,
        created_at=NOW,
    )


def application(*keys: ApplicationKey) -> Application:
    return Application("shop", "Shop", None, True, NOW, NOW, keys)


def test_each_secret_opens_its_own_key_only() -> None:
    first, second = generate_key(), generate_key()
    app = application(key(first, 1), key(second, 2, (Scope.READ,)))
    found = app.key_for(second, NOW)
    assert found is not None and found.key_id == 2 and found.scopes == (Scope.READ,)
    assert app.key_for(first, NOW) == app.keys[0]
    assert app.key_for(generate_key(), NOW) is None
    assert application().key_for(first, NOW) is None


def test_an_expired_or_revoked_key_opens_nothing() -> None:
    secret = generate_key()
    expiring = replace(key(secret), expires_at=NOW + timedelta(seconds=1))
    assert application(expiring).key_for(secret, NOW) is not None
    assert application(expiring).key_for(secret, NOW + timedelta(seconds=1)) is None
    revoked = replace(key(secret), revoked_at=NOW - timedelta(seconds=1))
    assert application(revoked).key_for(secret, NOW) is None


def test_a_rotated_secret_works_during_its_grace_period_only() -> None:
    old, new = generate_key(), generate_key()
    rotated = replace(
        key(new), previous_key_hash=hash_key(old), previous_key_expires_at=NOW + timedelta(hours=1)
    )
    app = application(rotated)
    assert app.key_for(new, NOW) is not None and app.key_for(old, NOW) is not None
    assert rotated.previous_valid_until(NOW) == NOW + timedelta(hours=1)
    later = NOW + timedelta(hours=1)
    assert app.key_for(old, later) is None and app.key_for(new, later) is not None
    assert rotated.previous_valid_until(later) is None
    # Revoking a key ends its previous secret too.
    assert application(replace(rotated, revoked_at=NOW)).key_for(old, NOW) is None


def test_the_first_key_is_the_one_made_with_the_application() -> None:
    made, other = key(generate_key(), 1), key(generate_key(), 2)
    assert application(made, other).first_key == made
    assert application(replace(made, revoked_at=NOW), other).first_key is None
    assert application().first_key is None


def test_the_scopes_are_ingest_read_manage() -> None:
    assert [s.value for s in ALL_SCOPES] == ["ingest", "read", "manage"]
