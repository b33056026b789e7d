"""The executors' name for the one retry policy and error mapping, which lives in
``shared/adapters/api_calls.py`` so that adapters outside this package (Cloud Tasks) use it
without importing every executor."""
from shared.adapters.api_calls import RETRYABLE, TRANSIENT, ApiCaller, RetryPolicy, missing_permission

__all__ = ["RETRYABLE", "TRANSIENT", "ApiCaller", "RetryPolicy", "missing_permission"]
