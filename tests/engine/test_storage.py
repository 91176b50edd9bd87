"""engine.storage: upload tokens and the `_storage` fields, without a server."""
from __future__ import annotations

import time

import pytest

from engine.storage import StorageError, UploadToken, check_storage_id, storage_fields
from engine.errors import ArgumentError
from values import new_id

SECRET = b"s" * 32


def test_tokens_round_trip_and_refuse_tampering_and_expiry() -> None:
    token = UploadToken(new_id("_storage"), int(time.time()) + 60)
    signed = token.sign(SECRET)
    assert UploadToken.verify(signed, SECRET) == token
    body, sig = signed.split(".")
    for bad, status in [(None, 400), ("", 400), ("a.b.c", 400), ("x" * 600, 400), (body + ".", 403),
                        (body + "." + sig[::-1], 403), (signed, 403)]:
        with pytest.raises(StorageError) as err:
            UploadToken.verify(bad, SECRET if bad != signed else b"another deployment")
        assert err.value.status == status, bad
    other_table = UploadToken(new_id("files"), token.expires).sign(SECRET)
    with pytest.raises(StorageError) as err:
        UploadToken.verify(other_table, SECRET)
    assert err.value.status == 400
    with pytest.raises(StorageError) as err:
        UploadToken.verify(signed, SECRET, now=token.expires + 1)
    assert (err.value.status, err.value.code) == (410, "UploadUrlExpired")


def test_storage_ids_and_fields() -> None:
    storage_id = new_id("_storage")
    assert check_storage_id(storage_id) == storage_id
    for bad in [new_id("files"), "nope", None, 3]:
        with pytest.raises(ArgumentError, match="_storage"):
            check_storage_id(bad)
    assert storage_fields("aGk=", 3, None) == {"sha256": "aGk=", "size": 3.0}
    assert storage_fields("aGk=", 3, "image/png")["contentType"] == "image/png"
