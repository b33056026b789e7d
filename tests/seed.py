"""Facts copied from the seed document (../shared/seed/translation.en.md), for tests to hold the code to.

Written out here rather than imported from shared/domain/preflight.py: a test that compared the code's role
list with itself could not fail.
"""

# "Workload Identity Federation": the only roles of the pipeline service account.
SEED_ROLES = frozenset({
    "roles/artifactregistry.writer",
    "roles/run.admin",
    "roles/run.developer",
    "roles/cloudsql.client",
    "roles/cloudsql.editor",
    "roles/secretmanager.secretAccessor",  # only in prod stages
    "roles/redis.admin",
    "roles/compute.networkUser",
})

# What the preflight requires of the shipped pipeline: the seed's roles and the log writer of
# builds that run as the pipeline account with CLOUD_LOGGING_ONLY (issue 12, finding 1).
REQUIRED_ROLES = frozenset(SEED_ROLES) | {"roles/logging.logWriter"}
