"""User-data protection (docs/privacy.md): what the engine holds about a user, and the user's rights
over it. So far: the export (right of access and portability), erasure, the tamper-evident audit log
and retention."""

from foryou.privacy.audit import AuditLog, verify
from foryou.privacy.erasure import ErasureService, Tombstones
from foryou.privacy.export import ExportService
from foryou.privacy.retention import RetentionService

__all__ = ["AuditLog", "ErasureService", "ExportService", "RetentionService", "Tombstones", "verify"]
