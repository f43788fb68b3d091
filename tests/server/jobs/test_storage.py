"""LocalStorage on a real directory: round trips, unguessable keys, traversal, atomic writes, expiry."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from segany.errors import InvalidInput
from segany.server.jobs.storage import LocalStorage, Storage, StoredFileNotFound


@pytest.fixture()
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "files")


def _all_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


def test_put_get_info_round_trip(storage: LocalStorage) -> None:
    data = os.urandom(5000)
    key = storage.put(data, ".png", name="mask_0.png", owner="key-1")
    assert key.endswith(".png")
    assert storage.get(key) == data
    with storage.open(key) as handle:
        assert handle.read() == data
    info = storage.info(key)
    assert (info.key, info.size, info.content_type, info.name, info.owner) == (key, 5000, "image/png", "mask_0.png",
                                                                               "key-1")
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.md5 == hashlib.md5(data).hexdigest()
    assert abs(info.created_at - time.time()) < 60
    assert storage.path_for(key).read_bytes() == data
    assert isinstance(storage, Storage)


def test_keys_are_unguessable_and_distinct(storage: LocalStorage) -> None:
    keys = {storage.put(b"same bytes", ".png") for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        token = key.removesuffix(".png")
        assert len(token) >= 32  # >= 192 random bits in URL-safe base64


def test_suffix_from_content_type_and_default(storage: LocalStorage) -> None:
    assert storage.put(b"x", content_type="image/jpeg").endswith((".jpg", ".jpeg"))
    plain = storage.put(b"x")
    assert "." not in plain
    assert storage.info(plain).content_type == "application/octet-stream"
    assert storage.info(storage.put(b"{}", ".JSON")).content_type == "application/json"


@pytest.mark.parametrize("suffix", ["png", "./png", "/../x", ".p/g", ".toolongsuffixx", ". png"])
def test_bad_suffix_rejected(storage: LocalStorage, suffix: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        storage.put(b"x", suffix)
    assert caught.value.field == "suffix"


@pytest.mark.parametrize("key", [
    "../secret.txt", "..", "/etc/passwd", "ab/../../secret.txt", "..%2f..%2fsecret.txt", "",
    "a" * 40 + "/../../secret.txt", "\\..\\secret.txt", "secret.txt", "a" * 65, "a" * 20 + "\x00",
])
def test_path_traversal_and_malformed_keys_rejected(storage: LocalStorage, tmp_path: Path, key: str) -> None:
    (tmp_path / "secret.txt").write_text("do not serve")
    for read in (storage.open, storage.get, storage.info, storage.path_for, storage.url_for):
        with pytest.raises(StoredFileNotFound):
            read(key)
    assert storage.delete(key) is False
    assert (tmp_path / "secret.txt").exists()


def test_sidecars_and_temporaries_are_not_addressable(storage: LocalStorage) -> None:
    key = storage.put(b"mask", ".png")
    hidden = [path.name for path in _all_files(storage.root) if path.name.startswith(".")]
    assert hidden == [f".{key}.json"]
    for name in hidden + [".tmp-abcdefghijklmnopqrstuvwxyz"]:
        with pytest.raises(StoredFileNotFound):
            storage.get(name)


def test_writes_leave_no_temporaries(storage: LocalStorage) -> None:
    keys = [storage.put(os.urandom(100), ".png") for _ in range(10)]
    names = {path.name for path in _all_files(storage.root)}
    assert names == set(keys) | {f".{key}.json" for key in keys}


def test_delete(storage: LocalStorage) -> None:
    key = storage.put(b"mask", ".png")
    assert storage.delete(key) is True
    assert storage.delete(key) is False
    with pytest.raises(StoredFileNotFound):
        storage.get(key)
    assert _all_files(storage.root) == []


def test_url_for(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, url_prefix="/files/")
    key = storage.put(b"x", ".png")
    assert storage.url_for(key) == f"/files/{key}"
    assert storage.url_for(key, "http://127.0.0.1:8000/") == f"http://127.0.0.1:8000/files/{key}"


def test_info_survives_a_lost_sidecar(storage: LocalStorage) -> None:
    key = storage.put(b"12345", ".png")
    storage.path_for(key).with_name(f".{key}.json").unlink()
    info = storage.info(key)
    assert (info.size, info.content_type, info.sha256) == (5, "image/png", None)


def test_expire_by_age(storage: LocalStorage) -> None:
    now = time.time()
    old = storage.put(b"old", ".png")
    new = storage.put(b"new", ".png")
    for path in (storage.path_for(old), storage.path_for(old).with_name(f".{old}.json")):
        os.utime(path, (now - 7200, now - 7200))
    shard = storage.path_for(new).parent
    stale_temp = shard / ".tmp-crashed"
    stale_temp.write_bytes(b"partial")
    os.utime(stale_temp, (now - 7200, now - 7200))
    orphan_sidecar = shard / ".ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ.png.json"
    orphan_sidecar.write_text("{}")
    os.utime(orphan_sidecar, (now - 7200, now - 7200))

    assert storage.expire(3600, now=now) == [old]
    assert storage.get(new) == b"new"
    with pytest.raises(StoredFileNotFound):
        storage.get(old)
    assert not stale_temp.exists() and not orphan_sidecar.exists()
    assert storage.expire(3600, now=now) == []
    assert sorted(storage.expire(0, now=now + 1)) == [new]
