"""Credentials files are refused by a message that names the file and the field, never by one
that shows what the file holds (the secret canary test found the GCS client quoting it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from icechunk_operator.api.common import Credentials
from icechunk_operator.engine.credentials import CredentialsError, resolve_credentials

SECRET = "c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1iZS1zaG93bg=="


@pytest.mark.parametrize(
    ("content", "scheme", "message"),
    [
        (json.dumps(SECRET), "gs", "is not a JSON object"),
        (SECRET, "gs", "is not a JSON object"),
        (json.dumps({"client_email": "a@b", "private_key": 918273645}), "gs", "private_key must be a string"),
        (json.dumps({"disable_oauth": SECRET}), "gs", "disable_oauth must be true or false"),
        (json.dumps([SECRET]), "s3", "is not a JSON object"),
        (b"\xff" + SECRET.encode(), "az", "is not a JSON object"),
    ],
    ids=["gs-json-string", "gs-bare-text", "gs-numeric-key", "gs-string-flag", "s3-list", "az-not-utf8"],
)
def test_unusable_credentials_file_is_refused_without_its_content(
    tmp_path: Path, content: str | bytes, scheme: str, message: str
) -> None:
    path = tmp_path / "key.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)

    with pytest.raises(CredentialsError) as caught:
        resolve_credentials(Credentials(file=str(path)), scheme)

    assert str(caught.value).startswith(f"credentials.file: {path}")
    assert message in str(caught.value)
    assert SECRET not in f"{caught.value} {caught.value!r}" and "918273645" not in str(caught.value)


def test_service_account_file_of_the_right_shape_is_passed_on_by_path(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    path.write_text(json.dumps({"client_email": "a@b", "private_key": SECRET, "private_key_id": "k"}))

    resolved = resolve_credentials(Credentials(file=str(path)), "gs")

    assert resolved.gcs_service_account_file == str(path)
    assert SECRET not in repr(resolved) and SECRET not in str(resolved)
