"""The small web app that `make demo` releases through the pipeline (stdlib only)."""
