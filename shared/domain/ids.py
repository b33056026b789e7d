"""What an id that names a document or a run may look like, checked when it is parsed.

Release ids become Firestore document ids and parts of stage-run ids
(``<release>.<stage>.a<n>``) and URLs: no '/', no '.', not '..', not Firestore's
reserved ``__x__`` form. Anything else is refused at the edge (dead letter, 400, 404)
instead of failing on every redelivery further in.
"""
from __future__ import annotations

import re

RELEASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def valid_release_id(value: object) -> bool:
    return isinstance(value, str) and bool(RELEASE_ID.match(value))
