"""Which quota tier a Firebase Auth user record falls in (the record as the Admin SDK reads it)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from firebase_admin import auth as firebase_auth

from infra.identity import SignInProviders, provider_of
from infra.settings import Settings

pytestmark = pytest.mark.usefixtures("no_settings_env")


def record(**fields: Any) -> firebase_auth.UserRecord:
    return firebase_auth.UserRecord({"localId": "u1", **fields})


@pytest.mark.parametrize(
    ("fields", "tier"),
    [
        ({}, "anonymous"),
        ({"providerUserInfo": []}, "anonymous"),
        (
            {"email": "a@example.com", "providerUserInfo": [{"providerId": "password", "rawId": "a"}]},
            "password",
        ),
        ({"providerUserInfo": [{"providerId": "google.com", "rawId": "g"}]}, "google.com"),
        (
            {"phoneNumber": "+15555550100", "providerUserInfo": [{"providerId": "phone", "rawId": "p"}]},
            "phone",
        ),
        ({"email": "a@example.com"}, "password"),  # an email without a linked method: not anonymous
        ({"customAttributes": json.dumps({"quotaTier": "partner"})}, "partner"),
        ({"customAttributes": json.dumps({"quotaTier": ""})}, "anonymous"),
        ({"customAttributes": json.dumps({"quotaTier": 3})}, "anonymous"),
    ],
    ids=[
        "anonymous",
        "anonymous-empty-list",
        "password",
        "google",
        "phone",
        "email-only",
        "claimed-tier",
        "empty-claim",
        "non-string-claim",
    ],
)
def test_a_user_record_names_its_tier(fields: dict[str, Any], tier: str) -> None:
    assert provider_of(record(**fields)) == tier


def test_no_lookups_are_made_where_no_tier_would_use_them() -> None:
    emulators = {"firestore_emulator_host": "127.0.0.1:1", "firebase_auth_emulator_host": None}
    assert SignInProviders.from_settings(Settings(**emulators)) is None  # no Auth to ask
    assert SignInProviders.from_settings(Settings(quotas={"tiers": {}})) is None
    assert SignInProviders.from_settings(Settings(quotas={"enabled": False})) is None
