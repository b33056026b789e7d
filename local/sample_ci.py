"""The sample app's CI steps, run by the stand-in as local build steps and job containers.

Each subcommand is a real step that can pass or fail, and reports what the release
notes need (test counts, digest, run time) as JSON in ``$BUILDER_OUTPUT/output``,
the way a Cloud Build step returns output.

  python -m local.sample_ci unit --tag TAG
  python -m local.sample_ci build --tag TAG [--image REF]
  python -m local.sample_ci push --tag TAG
  python -m local.sample_ci e2e --tag TAG
  python -m local.sample_ci schema
  python -m local.sample_ci ingest              (job; env DATA_DIR)
  python -m local.sample_ci chaos --tag TAG
  python -m local.sample_ci chaos-verdict --tag TAG

Files live under $SAMPLE_STACK_DIR (the local stack's work folder, default .local-stack).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

STACK = Path(os.environ.get("SAMPLE_STACK_DIR", ".local-stack"))
IMAGES = STACK / "images" / "sample-app"
REGISTRY = STACK / "registry"
RAG_SCHEMA = Path("sample_app/rag_schema.sql")


def output(data: dict) -> None:
    """Return step output like Cloud Build: a small file under $BUILDER_OUTPUT."""
    print(json.dumps(data))
    folder = os.environ.get("BUILDER_OUTPUT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "output").write_text(json.dumps(data)[:4000])


def junit_counts(path: Path) -> dict:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in totals:
            totals[key] += int(suite.get(key, 0))
    return totals


def cmd_unit(args) -> int:
    """The sample app's unit tests, with their JUnit counts as step output."""
    report = STACK / "reports" / f"unit-{args.tag}.xml"
    report.parent.mkdir(parents=True, exist_ok=True)
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "sample_app/tests",
                            f"--junitxml={report}"])
    output({"junit": str(report), **junit_counts(report)})
    return code


def cmd_build(args) -> int:
    IMAGES.mkdir(parents=True, exist_ok=True)
    image = IMAGES / f"{args.tag}.tar.gz"
    with tarfile.open(image, "w:gz") as tar:
        tar.add("sample_app", filter=lambda i: None if any(part in i.name for part in ("__pycache__", "/tests", "/chaos"))
                else i)
    if args.image and os.environ.get("STANDIN_DOCKER_IMAGES"):
        # What `docker build -t IMAGE .` leaves in the build's daemon (local/standin/workspace.py):
        # Cloud Build then pushes it, and the registry reports its digest.
        with open(os.environ["STANDIN_DOCKER_IMAGES"], "a") as daemon:
            daemon.write(args.image + "\n")
    output({"image": args.image or f"local/sample-app:{args.tag}"})
    return 0


def cmd_push(args) -> int:
    if not (REGISTRY / "credentials").exists():
        print("push: denied: no credentials for the registry (authenticate first)", file=sys.stderr)
        return 1
    source = IMAGES / f"{args.tag}.tar.gz"
    if not source.exists():
        print(f"push: no image {source}; the build stage did not produce it", file=sys.stderr)
        return 1
    (REGISTRY / "sample-app").mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, REGISTRY / "sample-app" / source.name)
    output({"pushed": f"local/sample-app:{args.tag}"})
    return 0


def _serve_image(tag: str, env: dict | None = None):
    """Start the pushed image's app on a free port; returns (process, base url, folder)."""
    folder = Path(tempfile.mkdtemp(prefix="sample-app-"))
    with tarfile.open(REGISTRY / "sample-app" / f"{tag}.tar.gz") as tar:
        tar.extractall(folder, filter="data")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "sample_app.server"], cwd=folder,
                            env={**os.environ, "PORT": str(port), "VERSION": tag, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "/health/liveliness", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    return proc, base, folder


def _get(url: str) -> tuple[int, float]:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError:
        status = 0
    return status, (time.perf_counter() - started) * 1000


def cmd_e2e(args) -> int:
    proc, base, folder = _serve_image(args.tag)
    cases = []
    try:
        for path in ("/", "/health/liveliness"):
            status, ms = _get(base + path)
            cases.append((path, status, ms))
    finally:
        proc.terminate()
        proc.wait(5)
        shutil.rmtree(folder, ignore_errors=True)
    failures = [c for c in cases if c[1] != 200]
    suite = ET.Element("testsuite", name="e2e", tests=str(len(cases)), failures=str(len(failures)), errors="0", skipped="0")
    for path, status, ms in cases:
        case = ET.SubElement(suite, "testcase", name=f"GET {path}", time=f"{ms / 1000:.3f}")
        if status != 200:
            ET.SubElement(case, "failure", message=f"status {status}")
    report = STACK / "reports" / f"e2e-{args.tag}.xml"
    report.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(report)
    output({"junit": str(report), **junit_counts(report)})
    return 1 if failures else 0


def cmd_schema(args) -> int:
    """Dry-run the vector schema on a copy, then apply it; record the run time, judge nothing."""
    data = STACK / "data" / "staging"
    data.mkdir(parents=True, exist_ok=True)
    sql = RAG_SCHEMA.read_text()
    live = sqlite3.connect(data / "rag.sqlite3")
    started = time.perf_counter()
    dry = sqlite3.connect(":memory:")
    live.backup(dry)
    try:
        dry.executescript(sql)
    except sqlite3.Error as exc:
        print(f"schema: dry-run of {RAG_SCHEMA} failed: {exc}", file=sys.stderr)
        return 1
    dry_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    try:
        live.executescript(sql)
    except sqlite3.Error as exc:
        print(f"schema: apply of {RAG_SCHEMA} failed: {exc}", file=sys.stderr)
        return 1
    apply_ms = (time.perf_counter() - started) * 1000
    output({"dry_run_ms": round(dry_ms, 2), "apply_ms": round(apply_ms, 2)})
    return 0


def _embed(text: str, dims: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [b / 255 for b in digest[:dims]]


def cmd_ingest(args) -> int:
    """A mini batch through the ingestion path; verifies embeddings; never backfills."""
    data = Path(os.environ["DATA_DIR"])
    db = sqlite3.connect(data / "rag.sqlite3")
    batch = [f"smoke document {i} {time.time_ns()}" for i in range(3)]
    ids = []
    for text in batch:
        cur = db.execute("INSERT INTO rag_documents (body) VALUES (?)", (text,))
        db.execute("INSERT INTO rag_embeddings (document_id, vector) VALUES (?, ?)",
                   (cur.lastrowid, json.dumps(_embed(text))))
        ids.append(cur.lastrowid)
    db.commit()
    marks = ",".join("?" * len(ids))
    rows = db.execute(f"SELECT vector FROM rag_embeddings WHERE document_id IN ({marks})", ids).fetchall()
    if len(rows) != len(batch) or any(len(json.loads(v)) != 8 for (v,) in rows):
        print(f"ingest: expected {len(batch)} embeddings of 8 dimensions, found {len(rows)}", file=sys.stderr)
        return 1
    print(f"ingest: {len(batch)} documents embedded and verified (queue ingestion, no backfill)")
    return 0


def cmd_chaos(args) -> int:
    """The chaos smoke on the pushed image, by the real tools: Locust headless (its stats and
    failures CSVs and --json), the chaos tests under pytest (--junitxml, pytest-json-report) and
    under Node's test runner (JUnit). chaos-verdict judges what they wrote; no report is made here."""
    from local import chaos_tools

    reports = STACK / "reports" / f"chaos-{args.tag}"
    shutil.rmtree(reports, ignore_errors=True)
    reports.mkdir(parents=True)
    proc, base, folder = _serve_image(args.tag)
    try:
        locust = chaos_tools.run_locust(base, reports / "locust", users=args.users, seconds=args.seconds)
        chaos_tools.run_pytest(base, reports / "chaos-junit.xml", reports / "chaos-report.json")
        if shutil.which("node"):
            chaos_tools.run_node(base, reports / "node-junit.xml")
    finally:
        proc.terminate()
        proc.wait(5)
        shutil.rmtree(folder, ignore_errors=True)
    print(f"chaos: locust {args.users} users for {args.seconds}s against the pushed image; reports: "
          + ", ".join(sorted(p.name for p in reports.iterdir())))
    return 0 if locust["stats"].exists() else 1


def cmd_chaos_verdict(args) -> int:
    """The chaos gate itself: shared.domain.chaos judges every report the chaos step's tools wrote."""
    from shared.domain.chaos import main as chaos_main

    reports = STACK / "reports" / f"chaos-{args.tag}"
    given = [("--junit", "chaos-junit.xml"), ("--junit", "node-junit.xml"), ("--json", "chaos-report.json"),
             ("--locust", "locust_stats.csv"), ("--locust", "locust.json")]
    argv = [part for flag, name in given if name != "node-junit.xml" or (reports / name).exists()
            for part in (flag, str(reports / name))]
    return chaos_main(argv + ["--max-error-rate", "0.05", "--max-p95-ms", str(args.max_p95_ms)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.sample_ci")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("unit", "build", "push", "e2e"):
        sub.add_parser(name).add_argument("--tag", required=True)
    sub.choices["build"].add_argument("--image", default="", help="the reference the build's images push")
    sub.add_parser("schema")
    sub.add_parser("ingest")
    chaos = sub.add_parser("chaos")
    chaos.add_argument("--tag", required=True)
    chaos.add_argument("--users", type=int, default=4)
    chaos.add_argument("--seconds", type=int, default=5)
    verdict = sub.add_parser("chaos-verdict")
    verdict.add_argument("--tag", required=True)
    verdict.add_argument("--max-p95-ms", type=float, default=800)
    args = parser.parse_args(argv)
    handler = {"unit": cmd_unit, "chaos-verdict": cmd_chaos_verdict, "build": cmd_build, "push": cmd_push, "e2e": cmd_e2e,
               "schema": cmd_schema, "ingest": cmd_ingest, "chaos": cmd_chaos}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
