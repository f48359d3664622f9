"""Key layout: what an object in the ingest or artifacts bucket is, by its (decoded) key alone.

The layout (DESIGN §6):

* ingest bucket: ``checkpoints/{model_name}/{version}/{file}`` (a checkpoint, or ``heimdall.json``)
  and ``bundles/…/{name}.heimdall[.gz]``;
* artifacts bucket: ``exports/{job_id}/{name}.heimdall`` (a bundle written by a conversion job).

The ingest use case routes notifications by it, and the HTTP API checks a checkpoint key with it before
starting a job; what the object holds is checked later, by the use case that reads it.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from heimdall.contracts.manifest import MANIFEST_FILE_NAME

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_BUNDLE_SUFFIXES = (".heimdall", ".heimdall.gz")
_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


class KeyKind(enum.StrEnum):
    CHECKPOINT = "checkpoint"
    MANIFEST = "manifest"
    BUNDLE = "bundle"
    JOB_BUNDLE = "job_bundle"
    IGNORED = "ignored"  # something a job writes that is not a bundle (models, package, result.json)
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ClassifiedKey:
    kind: KeyKind
    model_name: str | None = None
    version: str | None = None
    job_id: str | None = None
    reason: str | None = None

    @property
    def prefix(self) -> str | None:
        """``checkpoints/{model_name}/{version}/`` for checkpoints and manifests."""
        if self.model_name is None or self.version is None:
            return None
        return f"checkpoints/{self.model_name}/{self.version}/"


def classify_ingest_key(key: str) -> ClassifiedKey:
    """What an object in the ingest bucket is, by its key (content is checked later)."""
    parts = key.split("/")
    if _has_path_tricks(parts):
        return ClassifiedKey(KeyKind.UNKNOWN, reason="the key contains '.', '..' or empty path segments")
    if parts[0] == "checkpoints":
        if len(parts) != 4:
            return ClassifiedKey(
                KeyKind.UNKNOWN, reason="checkpoints go under checkpoints/{model_name}/{version}/{file}"
            )
        _, name, version, file_name = parts
        if not _NAME.match(name) or not _VERSION.match(version):
            return ClassifiedKey(KeyKind.UNKNOWN, reason=f"invalid model name or version in {key!r}")
        if file_name == MANIFEST_FILE_NAME:
            return ClassifiedKey(KeyKind.MANIFEST, model_name=name, version=version)
        if file_name.lower().endswith(_CHECKPOINT_SUFFIXES):
            return ClassifiedKey(KeyKind.CHECKPOINT, model_name=name, version=version)
        return ClassifiedKey(
            KeyKind.UNKNOWN,
            reason=f"unsupported file {file_name!r}: expected {MANIFEST_FILE_NAME} or a checkpoint "
            f"({', '.join(_CHECKPOINT_SUFFIXES)})",
        )
    if parts[0] == "bundles" and len(parts) >= 2:
        if parts[-1].lower().endswith(_BUNDLE_SUFFIXES):
            return ClassifiedKey(KeyKind.BUNDLE)
        return ClassifiedKey(KeyKind.UNKNOWN, reason="bundles must end in .heimdall or .heimdall.gz")
    return ClassifiedKey(KeyKind.UNKNOWN, reason="not under checkpoints/ or bundles/")


def classify_artifacts_key(key: str) -> ClassifiedKey:
    """What an object in the artifacts bucket is: only a job's bundle is acted on."""
    parts = key.split("/")
    if _has_path_tricks(parts):
        return ClassifiedKey(KeyKind.UNKNOWN, reason="the key contains '.', '..' or empty path segments")
    if len(parts) == 3 and parts[0] == "exports" and _JOB_ID.match(parts[1]):
        if parts[2].lower().endswith(_BUNDLE_SUFFIXES):
            return ClassifiedKey(KeyKind.JOB_BUNDLE, job_id=parts[1])
        return ClassifiedKey(KeyKind.IGNORED, job_id=parts[1])
    # Everything else in the artifacts bucket is written by Heimdall itself and triggers nothing.
    return ClassifiedKey(KeyKind.IGNORED)


def _has_path_tricks(parts: list[str]) -> bool:
    return any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts)
