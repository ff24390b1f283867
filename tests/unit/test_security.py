import pytest

from serving.security import (
    Forbidden,
    KeyRing,
    RateLimited,
    Unauthenticated,
    hash_secret,
    new_key,
    write_keys,
)


def test_keys_are_stored_only_as_hashes(tmp_path):
    plaintext, entry = new_key("teller-app", ["fraud"])
    secret = plaintext.split("_", 2)[2]
    write_keys(tmp_path / "keys.yaml", [entry])
    text = (tmp_path / "keys.yaml").read_text()
    assert secret not in text and hash_secret(secret) in text
    ring = KeyRing.from_file(tmp_path / "keys.yaml")
    assert ring.authenticate(f"Bearer {plaintext}").id == "teller-app"


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer fsk_teller-app_x",
                                    "Bearer fsk_nobody_x", "Bearer nonsense"])
def test_missing_or_wrong_keys_are_unauthenticated(header):
    _, entry = new_key("teller-app")
    with pytest.raises(Unauthenticated) as info:
        KeyRing([entry]).authenticate(header)
    assert info.value.status_code == 401
    assert info.value.headers == {"WWW-Authenticate": "Bearer"}


def test_keys_are_scoped_to_models():
    _, entry = new_key("fraud-only", ["fraud"])
    KeyRing.authorize(entry, "fraud")
    with pytest.raises(Forbidden) as info:
        KeyRing.authorize(entry, "credit")
    assert info.value.status_code == 403


def test_rate_limit_refills_over_time_and_says_when_to_retry():
    from serving.security import RateLimiter

    now = [0.0]
    _, entry = new_key("bursty", rate_per_s=2)
    limiter = RateLimiter(clock=lambda: now[0])
    limiter.check(entry)
    limiter.check(entry)  # burst of 2
    with pytest.raises(RateLimited) as info:
        limiter.check(entry)
    assert info.value.status_code == 429 and int(info.value.headers["Retry-After"]) >= 1
    now[0] += 0.5  # one token back at 2/s
    limiter.check(entry)
    _, unlimited = new_key("batch-job")
    for _ in range(100):
        limiter.check(unlimited)


def test_secrets_may_contain_underscores():
    from serving.security import ApiKey

    entry = ApiKey(id="app", sha256=hash_secret("ab_cd_ef"))
    assert KeyRing([entry]).authenticate("Bearer fsk_app_ab_cd_ef").id == "app"
