"""The release-tools image copies an exact file set (deploy/release-tools/Dockerfile). No Docker
daemon runs here, so this copies the same set into an empty folder and runs `python -m shared.chaos`
there with nothing else on the path: a file the module needs but the image lacks fails this test."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def copy_image_files(dest: Path) -> None:
    dockerfile = (ROOT / "deploy/release-tools/Dockerfile").read_text()
    copies = re.findall(r"^COPY (.+) (\S+)$", dockerfile, flags=re.M)
    assert copies, "the Dockerfile copies nothing"
    for sources, target in copies:
        folder = dest / target.removeprefix("/tools/")
        folder.mkdir(parents=True, exist_ok=True)
        for source in sources.split():
            shutil.copy(ROOT / source, folder)


def test_chaos_verdict_runs_from_the_image_file_set(tmp_path):
    tools = tmp_path / "tools"
    copy_image_files(tools)
    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuite tests="2" failures="1"><testcase name="a"/>'
                     '<testcase name="b"><failure/></testcase></testsuite>')
    result = subprocess.run(
        [sys.executable, "-S", "-m", "shared.chaos", "--junit", str(junit), "--max-error-rate", "0.05"],
        cwd=tmp_path, env={"PYTHONPATH": str(tools)}, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result.stderr
    assert "error rate 50.00%" in result.stdout
