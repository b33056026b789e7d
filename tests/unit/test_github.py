"""Webhook signature and push parsing, without any server."""
from __future__ import annotations

import pytest

from shared.domain.errors import WebhookRejected
from shared.app.push import parse_push, signature_for, verify_signature

GITHUB_VECTOR = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_githubs_published_test_vector_verifies():
    assert signature_for("It's a Secret to Everybody", b"Hello, World!") == GITHUB_VECTOR
    assert verify_signature("It's a Secret to Everybody", b"Hello, World!", GITHUB_VECTOR)


@pytest.mark.parametrize(
    "secret, body, header",
    [
        ("It's a Secret to Everybody", b"Hello, World?", GITHUB_VECTOR),
        ("another secret", b"Hello, World!", GITHUB_VECTOR),
        ("It's a Secret to Everybody", b"Hello, World!", None),
        ("It's a Secret to Everybody", b"Hello, World!", GITHUB_VECTOR[:-1] + "0"),
        ("", b"Hello, World!", GITHUB_VECTOR),
    ],
)
def test_wrong_or_missing_signature_fails(secret, body, header):
    assert not verify_signature(secret, body, header)


def payload(ref="refs/heads/main", message="Fix\n\nRelease-Version: 1.4.0", after="a" * 40):
    return {"ref": ref, "after": after, "repository": {"full_name": "acme/app"},
            "pusher": {"name": "dev", "email": "dev@example.com"}, "head_commit": {"message": message}}


def test_branch_push_takes_version_from_trailer():
    push = parse_push(payload(), "main")
    assert (push.version, push.pushed_by, push.commit) == ("1.4.0", "dev@example.com", "a" * 40)


def test_tag_push_takes_version_from_tag():
    assert parse_push(payload(ref="refs/tags/v2.0.1", message=""), "main").version == "2.0.1"


def test_other_branches_and_deletions_do_not_release():
    assert parse_push(payload(ref="refs/heads/feature"), "main") is None
    assert parse_push(payload(after="0" * 40), "main") is None


@pytest.mark.parametrize(
    "kwargs, status, words",
    [
        ({"message": "no trailer"}, 422, "no 'Release-Version: X.Y.Z' trailer"),
        ({"message": "Release-Version: 1.4"}, 422, "'1.4', which is not semver"),
        ({"ref": "refs/tags/vnext", "message": ""}, 422, "tag refs/tags/vnext gives 'next'"),
        ({"after": "zz"}, 400, "not a commit sha"),
    ],
)
def test_unresolvable_pushes_are_refused_with_the_reason(kwargs, status, words):
    with pytest.raises(WebhookRejected) as err:
        parse_push(payload(**kwargs), "main")
    assert err.value.status == status and words in str(err.value)


def test_push_keeps_its_commits_and_compare_link_bounded():
    from shared.app.push import MAX_LISTED_COMMITS, push_changes

    commits = [{"id": f"{i:040x}", "message": f"change {i}\n\nbody", "author": {"name": f"dev{i}"}} for i in range(25)]
    changes = push_changes({"commits": commits, "compare": "https://github.com/a/b/compare/1...2", "before": "1" * 40})
    assert len(changes["commits"]) == MAX_LISTED_COMMITS and changes["total"] == 25
    assert changes["commits"][-1] == {"id": f"{24:040x}", "message": "change 24", "author": "dev24"}
    assert changes["compare_url"] == "https://github.com/a/b/compare/1...2"
    assert push_changes({"compare": "javascript:alert(1)"})["compare_url"] == ""
