"""The model-file resolver: order, hash checks, offline errors, and a real download."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import pytest

from gazeloop.fastpath import models
from gazeloop.fastpath.models import ModelFile, ModelFileError


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    env, cache = tmp_path / "env", tmp_path / "cache"
    env.mkdir()
    cache.mkdir()
    monkeypatch.setenv(models.ENV_MODELS, str(env))
    monkeypatch.setenv(models.ENV_CACHE, str(cache))
    monkeypatch.setenv(models.ENV_OFFLINE, "1")
    return env, cache


def _spec(data: bytes, url: str | None = None) -> ModelFile:
    return ModelFile("m.bin", hashlib.sha256(data).hexdigest(), url)


def test_order_explicit_then_env_then_cache(dirs, tmp_path):
    env, cache = dirs
    data = b"weights"
    spec = _spec(data)
    (cache / "m.bin").write_bytes(data)
    assert models.resolve(spec) == cache / "m.bin"
    (env / "m.bin").write_bytes(data)
    assert models.resolve(spec) == env / "m.bin"
    explicit = tmp_path / "mine.bin"
    explicit.write_bytes(data)
    assert models.resolve(spec, explicit) == explicit


def test_wrong_hash_is_an_error_never_used(dirs):
    env, _ = dirs
    (env / "m.bin").write_bytes(b"other weights")
    with pytest.raises(ModelFileError, match="SHA-256"):
        models.resolve(_spec(b"weights"))


def test_offline_missing_names_file_hash_and_env(dirs):
    spec = _spec(b"weights", "http://127.0.0.1:9/never")
    with pytest.raises(ModelFileError) as e:
        models.resolve(spec)
    msg = str(e.value)
    assert "m.bin" in msg and spec.sha256 in msg and "GAZELOOP_MODELS" in msg


def test_explicit_path_missing(dirs, tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        models.resolve(_spec(b"x"), tmp_path / "nope.bin")


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_download_on_loopback_checks_hash(dirs, http_root, monkeypatch):
    _, cache = dirs
    root, base = http_root
    monkeypatch.delenv(models.ENV_OFFLINE)
    data = b"published weights" * 1000
    (root / "m.bin").write_bytes(data)
    got = models.resolve(_spec(data, f"{base}/m.bin"))
    assert got == cache / "m.bin" and got.read_bytes() == data

    # A publisher serving other bytes than the pinned hash: error, nothing left in the cache.
    (root / "bad.bin").write_bytes(b"tampered")
    bad = ModelFile("bad.bin", hashlib.sha256(b"expected").hexdigest(), f"{base}/bad.bin")
    with pytest.raises(ModelFileError, match="SHA-256"):
        models.download(bad, cache)
    assert not (cache / "bad.bin").exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp file left


def test_shared_models_resolve_with_their_pinned_hashes(shared):
    for spec in (models.FACE_LANDMARKER, models.GAZE_IR_XML, models.GAZE_IR_BIN):
        assert models.resolve(spec).is_file()


def test_built_onnx_is_current_and_rebuilt_when_stale(gaze_onnx):
    assert models.onnx_is_current(gaze_onnx)
    assert not models.onnx_is_current(gaze_onnx.parent / "missing.onnx")


def test_a_cache_path_that_is_a_file_is_said_in_one_line(tmp_path):
    """GAZELOOP_CACHE pointing at a file gave only the OS's "File exists"."""
    from gazeloop.fastpath import models

    plain = tmp_path / "cache"
    plain.write_text("not a folder")
    for out in (plain, plain / "sub"):
        with pytest.raises(models.ModelFileError) as e:
            models.build_face_onnx(out)
        msg = str(e.value)
        assert f"{plain} is a file, not a folder" in msg and "GAZELOOP_CACHE" in msg, msg
