from shared.domain.errors import PipelineError


class NotifyError(PipelineError):
    """A channel could not deliver. The message never holds a webhook URL or secret."""
