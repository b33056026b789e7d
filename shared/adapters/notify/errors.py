"""The channels' error: defined with the others in shared/domain/errors.py, since the ports
(LinkSender, Notifier) raise it and the application layer catches it."""
from shared.domain.errors import NotifyError

__all__ = ["NotifyError"]
