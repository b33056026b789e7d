"""Approval by signed link: tokens, the store of requests, and the service behind on_approval."""
