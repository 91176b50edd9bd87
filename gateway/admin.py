"""The deployment's admin key: generated at first start, stored owner-only, compared in constant time."""
from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

KEY_FILE = "admin_key"
UNSHOWN_FILE = "admin_key.unshown"  # exists from the key's creation until a start that succeeded has printed it


class AdminKey:
    """Loads or creates `DATA_DIR/admin_key` (mode 0600)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / KEY_FILE
        self._unshown = data_dir / UNSHOWN_FILE
        self.created = False
        if self.path.exists():
            self._key = self.path.read_text().strip()
        else:
            data_dir.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self._unshown, os.O_WRONLY | os.O_CREAT, 0o600))
            self._key = "tape_admin_" + secrets.token_urlsafe(32)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self._key + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.created = True

    @property
    def value(self) -> str:
        return self._key

    @property
    def unshown(self) -> bool:
        """True until `mark_shown`: no start has printed the key yet (a first start that failed did not)."""
        return self._unshown.exists()

    def mark_shown(self) -> None:
        """Record that the key was printed, so later starts print only where it is stored."""
        self._unshown.unlink(missing_ok=True)

    def check(self, candidate: str | None) -> bool:
        """True if `candidate` is the admin key (accepts `Convex <key>` / `Bearer <key>` forms).

        Anything that is not ASCII (a header aiohttp decoded with surrogate
        escapes, say) is simply not the key: never an exception.
        """
        if not candidate or not candidate.isascii():
            return False
        for prefix in ("Convex ", "Bearer "):
            if candidate.startswith(prefix):
                candidate = candidate[len(prefix):]
        candidate = candidate.split(":", 1)[0].strip()
        return hmac.compare_digest(candidate.encode(), self._key.encode())

    def __repr__(self) -> str:  # never print the key itself
        return f"AdminKey(path={str(self.path)!r})"
