"""tools/setup_env.sh, main.sh and test.sh refuse a bad environment variable with one line that
names it and says what to set, before anything is installed or run."""

import os
import subprocess

import pytest

from conftest import REPO


@pytest.mark.parametrize(
    "script, env, message",
    [
        ("setup_env.sh", {}, "[setup] ERROR: PYTHON=python3 could not create VENV={file} (above)"),
        ("setup_env.sh", {"PYTHON": "no-python", "VENV": "{new}"}, "PYTHON=no-python could not"),
        ("main.sh", {"SMOKE": "yes"}, "[main] ERROR: SMOKE=yes; use SMOKE=1"),
        ("test.sh", {"OFFICIAL": "no"}, "[test] ERROR: OFFICIAL=no; use OFFICIAL=0"),
    ],
)
def test_a_bad_environment_variable_is_named(script, env, message, tmp_path):
    """VENV a file, PYTHON no interpreter: venv's own 'Unable to create directory' or bash's
    'command not found', naming neither variable; SMOKE=yes ran the real CLIP, OFFICIAL=no built
    detectron2 main. VENV is a file in every case, so that nothing is ever installed."""
    names = {"file": tmp_path / "a file", "new": tmp_path / "new venv"}
    names["file"].write_text("")
    env = {"VENV": str(names["file"]), **{k: v.format(**names) for k, v in env.items()}}
    done = subprocess.run(
        [os.path.join(REPO, "tools", script)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and message.format(**names) in done.stderr, done.stderr
    assert not names["new"].exists()
