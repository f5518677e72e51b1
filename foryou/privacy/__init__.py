"""User-data protection (docs/privacy.md): what the engine holds about a user, and the user's rights
over it. So far: the export (right of access and portability), erasure, the tamper-evident audit log
and retention."""

from pathlib import Path

from foryou.config import Settings
from foryou.privacy.audit import AuditLog, verify
from foryou.privacy.erasure import ErasureService, Tombstones
from foryou.privacy.export import ExportService
from foryou.privacy.retention import RetentionService
from foryou.privacy.secret import privacy_secret


def open_audit(settings: Settings) -> AuditLog:
    """The audit log of the settings' data directory, keyed with their privacy secret, rotated past
    `privacy.audit_rotate_mb`."""
    return AuditLog(Path(settings.server.data), privacy_secret(settings),
                    rotate_bytes=int(settings.privacy.audit_rotate_mb * 1024 * 1024))


__all__ = ["AuditLog", "ErasureService", "ExportService", "RetentionService", "Tombstones", "open_audit",
           "privacy_secret", "verify"]
